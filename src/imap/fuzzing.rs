//! Entry points for the fuzz targets in fuzz/ (cargo fuzz): the pure
//! parts of command handling and of FETCH rendering, driven with
//! arbitrary bytes. Not part of the API; hidden from the docs. They must
//! never panic, whatever the input.

use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::CommandCodec;

use super::fetch::{clip, section_parts};
use super::sections::{filter_header, resolve, Spec};
use super::{address, extended, render, search, utf7};
use crate::mail::message::{parse_meta, MessageMeta};

const MAIL: &[u8] = b"From: A <a@x.test>\r\nTo: b@y.test\r\nSubject: =?utf-8?q?h=C3=A9?=\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\none\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\ntwo\r\n--b--\r\n";

/// The bytes a section names, as FETCH would send them.
fn section_bytes(raw: &[u8], meta: &MessageMeta, spec: Spec, partial: Option<(u64, u64)>) -> Vec<u8> {
    let slice = |s: u64, e: u64| raw.get(s as usize..e as usize).map(<[u8]>::to_vec).unwrap_or_default();
    match spec {
        Spec::Missing => vec![],
        Spec::Range(s, e) => {
            let e = e.min(meta.size);
            let (s, e) = clip(s.min(e), e, partial);
            slice(s.min(e), e)
        }
        Spec::Fields { start, end, names, not } => {
            let h = slice(start.min(end), end.min(raw.len() as u64));
            let f = filter_header(&h, &names, not);
            let (s, e) = clip(0, f.len() as u64, partial);
            f[s as usize..e as usize].to_vec()
        }
    }
}

/// A client command: the pre-parser, imap-codec, and whatever our code
/// computes from the parsed command without storage (sections, SEARCH
/// evaluation, LIST patterns, mailbox names).
pub fn command(data: &[u8]) {
    let (rewritten, _extras) = extended::preparse(data, "1:3");
    let _ = super::conn::tag_of(data);
    let Ok((_, cmd)) = CommandCodec::default().decode(&rewritten) else { return };
    let meta = parse_meta(MAIL, 1_700_000_000);
    match cmd.body {
        CommandBody::Fetch { macro_or_item_names, .. } => {
            let items: Vec<MessageDataItemName<'_>> = match macro_or_item_names {
                MacroOrMessageDataItemNames::Macro(m) => m.expand().into_iter().map(imap_codec::imap_types::IntoStatic::into_static).collect(),
                MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
            };
            for i in &items {
                if let MessageDataItemName::BodyExt { section, partial, .. } = i {
                    let (path, kind, _) = section_parts(section);
                    let p = partial.map(|(o, l)| (u64::from(o), u64::from(l.get())));
                    let _ = section_bytes(MAIL, &meta, resolve(&meta, &path, &kind), p);
                }
            }
        }
        CommandBody::Search { criteria, .. } => {
            let key = SearchKey::And(criteria);
            let _ = search::needs(&key);
            let text = search::decode_message(MAIL, true);
            let flags = vec!["\\Seen".to_string()];
            let c = search::Candidate { seq: 1, uid: 7, flags: &flags, modseq: 3, meta: Some(&meta), header: Some(&text), text: Some(&text) };
            let scope = search::Scope::new(5, 9, 1_800_000_000);
            let _ = search::matches(&key, &c, &scope);
        }
        CommandBody::List { .. } | CommandBody::Create { .. } => {
            let s = String::from_utf8_lossy(data);
            let _ = utf7::decode(&s).map(|d| utf7::encode(&d));
        }
        _ => {}
    }
}

/// Arbitrary mail through everything FETCH renders; the first bytes
/// choose a section path and a partial range.
pub fn render_mail(data: &[u8]) {
    let (ctl, raw) = data.split_at(data.len().min(6));
    let meta = parse_meta(raw, 0);
    let mut out = vec![];
    render::envelope(&mut out, &meta);
    render::body_structure(&mut out, &meta, 0, true);
    render::body_structure(&mut out, &meta, 0, false);
    let path: Vec<u32> = ctl.iter().take(3).map(|b| u32::from(b % 4)).filter(|n| *n > 0).collect();
    let partial = ctl.get(3..5).map(|p| (u64::from(p[0]), u64::from(p[1])));
    for kind in [
        super::sections::Kind::All,
        super::sections::Kind::Header,
        super::sections::Kind::Text,
        super::sections::Kind::Mime,
        super::sections::Kind::Fields(vec!["subject".into(), "from".into()], ctl.get(5).is_some_and(|b| b % 2 == 0)),
    ] {
        for p in [&path[..], &[][..], &[1][..], &[2, 1][..]] {
            let _ = section_bytes(raw, &meta, resolve(&meta, p, &kind), partial);
        }
    }
    let e = &meta.envelope;
    for f in [&e.from, &e.to, &e.cc, &e.sender, &e.reply_to, &e.bcc] {
        if let Some(v) = f {
            let _ = address::parse_address_list(v);
        }
    }
    let _ = search::decode_message(raw, true);
    let _ = search::decode_message(raw, false);
    let _ = search::decode_header(&meta.header);
}
