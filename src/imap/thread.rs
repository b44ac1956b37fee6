//! THREAD=ORDEREDSUBJECT (RFC 5256 §3): messages grouped by base subject,
//! each group a thread whose first message (by sent date) is the parent
//! of the others; threads ordered by the date of their first message.
//! Pure: the session loads the keys (`sort::keys`, stored metadata only)
//! and writes the response. (THREAD=REFERENCES is not built yet.)

use super::sort::Keys;

/// A thread: a message and its children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub number: u32,
    pub children: Vec<Node>,
}

/// ORDEREDSUBJECT over `(number, keys)` rows given in mailbox order.
pub fn ordered_subject(rows: &[(u32, Keys)]) -> Vec<Node> {
    // By base subject, then sent date; mailbox order breaks ties.
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| (&rows[a].1.subject, rows[a].1.date).cmp(&(&rows[b].1.subject, rows[b].1.date)));
    let mut threads: Vec<(i64, usize, Node)> = vec![];
    let mut i = 0;
    while i < order.len() {
        let first = order[i];
        let mut j = i + 1;
        let mut children = vec![];
        while j < order.len() && rows[order[j]].1.subject == rows[first].1.subject {
            children.push(Node { number: rows[order[j]].0, children: vec![] });
            j += 1;
        }
        threads.push((rows[first].1.date, first, Node { number: rows[first].0, children }));
        i = j;
    }
    threads.sort_by_key(|(date, pos, _)| (*date, *pos));
    threads.into_iter().map(|(_, _, n)| n).collect()
}

/// The response body: `(a b)` is a chain, `(a (b)(c))` a parent with two
/// children (RFC 5256 §4).
pub fn render(threads: &[Node]) -> String {
    fn chain(n: &Node, out: &mut String) {
        out.push_str(&n.number.to_string());
        match n.children.as_slice() {
            [] => {}
            [only] => {
                out.push(' ');
                chain(only, out);
            }
            many => {
                out.push(' ');
                for c in many {
                    out.push('(');
                    chain(c, out);
                    out.push(')');
                }
            }
        }
    }
    let mut out = String::new();
    for t in threads {
        out.push('(');
        chain(t, &mut out);
        out.push(')');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(subject: &str, date: i64) -> Keys {
        Keys { subject: subject.as_bytes().to_vec(), date, ..Keys::default() }
    }

    #[test]
    fn groups_by_subject_and_orders_threads_by_their_first_date() {
        let rows = vec![(1, k("B", 30)), (2, k("A", 20)), (3, k("B", 10)), (4, k("C", 5)), (5, k("A", 25)), (6, k("B", 40))];
        let t = ordered_subject(&rows);
        assert_eq!(render(&t), "(4)(3 (1)(6))(2 5)");
    }

    #[test]
    fn empty() {
        assert_eq!(render(&ordered_subject(&[])), "");
    }
}
