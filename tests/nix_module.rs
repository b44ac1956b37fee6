//! The NixOS module and the configuration parser agree: the TOML the module
//! renders (kept as a fixture; scripts/test checks that the fixture is what
//! `../shared/nixos-eval` renders for the VM test's `paris` node) is
//! accepted, read as written (no key ignored, no value changed), and every
//! key in it is one the module writes.

use std::path::Path;

const FIXTURE: &str = include_str!("fixtures/module-rendered.toml");
const MODULE: &str = include_str!("../modules/estafette.nix");

#[test]
fn the_rendered_config_is_accepted() {
    let c = estafette::config::Config::parse(FIXTURE, Path::new("/etc/estafette/estafette.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.node.name, "paris");
    assert_eq!(c.cluster.nodes.len(), 3);
    assert_eq!(c.rpc_public_addr().to_string(), "192.168.1.3:3901");
}

#[test]
fn every_key_of_the_fixture_is_written_by_the_module() {
    let table: toml::Table = toml::from_str(FIXTURE).unwrap();
    let mut keys = vec![];
    fn walk(v: &toml::Value, keys: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    keys.push(k.clone());
                    walk(v, keys);
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| walk(v, keys)),
            _ => {}
        }
    }
    walk(&toml::Value::Table(table), &mut keys);
    keys.sort();
    keys.dedup();
    for k in keys {
        // Written as `key = ...` or brought in by an `inherit (...) key ...;` line.
        let assigned = MODULE.contains(&format!("{k} ="));
        let inherited = MODULE
            .lines()
            .filter_map(|l| l.trim().strip_prefix("inherit ("))
            .any(|l| l.split([' ', ';']).any(|w| w == k));
        assert!(assigned || inherited, "the module never writes `{k}`");
    }
    // The module points the config at the credential systemd provides.
    assert!(MODULE.contains("\"${credDir}/rpc-secret\""));
    assert!(FIXTURE.contains("/run/credentials/estafette.service/rpc-secret"));
}

#[test]
fn the_rendered_config_is_read_as_written() {
    let fixture: toml::Table = toml::from_str(FIXTURE).unwrap();
    let parsed = estafette::config::Config::parse(FIXTURE, Path::new("/etc/estafette/estafette.toml")).unwrap();
    let back: toml::Table = toml::from_str(&parsed.to_toml()).unwrap();
    // Every value the module renders is the value the node runs with.
    fn same(path: &str, want: &toml::Value, got: Option<&toml::Value>) {
        match (want, got) {
            (toml::Value::Table(w), Some(toml::Value::Table(g))) => {
                for (k, v) in w {
                    same(&format!("{path}.{k}"), v, g.get(k));
                }
            }
            (toml::Value::Array(w), Some(toml::Value::Array(g))) if w.len() == g.len() => {
                for (i, v) in w.iter().enumerate() {
                    same(&format!("{path}[{i}]"), v, g.get(i));
                }
            }
            (w, g) => assert_eq!(Some(w), g, "`{path}` is rendered as {w} but read as {g:?}"),
        }
    }
    same("", &toml::Value::Table(fixture), Some(&toml::Value::Table(back)));
}
