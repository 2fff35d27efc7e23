//! Finds where a key lives in a YAML text, so that config errors found after
//! deserialisation can still say `(line N)`.
//!
//! serde gives us values without positions, so this module re-reads the text
//! with a deliberately small line-based reader that understands block
//! mappings (`key: value`), block sequences (`- item`, including
//! `- key: value` items whose first key sits on the dash line) and
//! indentation. Flow collections (`{ … }`, `[ … ]`), block scalars (`|`, `>`)
//! and everything else are opaque values: a path that reaches inside them
//! resolves to the nearest ancestor that is a real line. The text is assumed
//! to have been accepted by a real YAML parser first; on malformed input the
//! answers are best effort, never a panic.
//!
//! Paths are written like the config error keys: `a.b`, `list[i].c`, with
//! 0-based indexes.

/// One significant line of the text: not blank, not only a comment.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    /// 1-based line number in the text.
    no: usize,
    /// Column (in characters of indentation) where `text` starts.
    col: usize,
    /// The content from `col` to the end of the line, comments included.
    text: &'a str,
}

/// The shape of a value as far as line lookups care.
#[derive(Debug)]
enum Node {
    /// Anything we do not descend into: scalars, flow collections, block scalars.
    Opaque,
    Map(Vec<Entry>),
    Seq(Vec<Item>),
}

#[derive(Debug)]
struct Entry {
    key: String,
    line: usize,
    value: Node,
}

#[derive(Debug)]
struct Item {
    line: usize,
    value: Node,
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// The 1-based line of `path` (e.g. `pools[1].start_index`) in `text`, or
/// `None` when that exact key is not written in block style in the text.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let segs = parse_path(path);
    let (depth, line) = walk(&parse_document(text), &segs);
    (depth == segs.len()).then_some(line).flatten()
}

/// The 1-based line of `path`, or of its nearest ancestor that can be found
/// (a key inside a flow mapping resolves to the line of the key holding the
/// flow mapping; a missing key to the line of its parent). `None` only when
/// not even the first step of the path is in the text.
pub fn nearest_line(text: &str, path: &str) -> Option<usize> {
    walk(&parse_document(text), &parse_path(path)).1
}

/// The first key written twice in the same block mapping, top to bottom, as
/// its key path and the 1-based line of the second occurrence.
///
/// Duplicate keys are an error in YAML, but serde silently keeps the last one
/// when it fills a map (e.g. `claude.env`), so the config checks this itself.
pub fn duplicate_key(text: &str) -> Option<(String, usize)> {
    fn visit(node: &Node, path: &str) -> Option<(String, usize)> {
        match node {
            Node::Opaque => None,
            Node::Map(entries) => {
                for (i, e) in entries.iter().enumerate() {
                    let child = join_key(path, &e.key);
                    if entries[..i].iter().any(|prev| prev.key == e.key) {
                        return Some((child, e.line));
                    }
                    if let Some(found) = visit(&e.value, &child) {
                        return Some(found);
                    }
                }
                None
            }
            Node::Seq(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| visit(&item.value, &format!("{path}[{i}]"))),
        }
    }
    visit(&parse_document(text), "")
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Splits `a.b[2].c` into steps. Anything unparsable inside brackets is kept
/// as a key so that the walk simply stops there.
fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            segs.push(Seg::Key(name.to_string()));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(end) = inner.find(']') else {
                segs.push(Seg::Key(rest.to_string()));
                break;
            };
            match inner[..end].parse::<usize>() {
                Ok(i) => segs.push(Seg::Index(i)),
                Err(_) => segs.push(Seg::Key(inner[..end].to_string())),
            }
            rest = &inner[end + 1..];
        }
    }
    segs
}

/// How many steps of `segs` were found, and the line of the deepest one.
fn walk(root: &Node, segs: &[Seg]) -> (usize, Option<usize>) {
    let mut node = root;
    let mut line = None;
    for (depth, seg) in segs.iter().enumerate() {
        let next = match (seg, node) {
            (Seg::Key(k), Node::Map(entries)) => entries
                .iter()
                .find(|e| &e.key == k)
                .map(|e| (e.line, &e.value)),
            (Seg::Index(i), Node::Seq(items)) => items.get(*i).map(|it| (it.line, &it.value)),
            _ => None,
        };
        match next {
            Some((l, child)) => {
                line = Some(l);
                node = child;
            }
            None => return (depth, line),
        }
    }
    (segs.len(), line)
}

fn parse_document(text: &str) -> Node {
    let lines: Vec<Line> = text
        .lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let trimmed = raw.trim_start_matches(' ');
            let content = trimmed.trim_end();
            if content.is_empty() || content.starts_with('#') || is_document_marker(content) {
                return None;
            }
            Some(Line {
                no: i + 1,
                col: raw.len() - trimmed.len(),
                text: content,
            })
        })
        .collect();
    parse_node(&lines)
}

/// `---`, `...` and `%` directives carry no keys for us.
fn is_document_marker(content: &str) -> bool {
    content == "---" || content.starts_with("--- ") || content == "..." || content.starts_with('%')
}

/// `lines` are exactly the lines of one block value; the first decides its kind.
fn parse_node(lines: &[Line]) -> Node {
    let Some(first) = lines.first() else {
        return Node::Opaque;
    };
    if dash_rest(first.text).is_some() {
        parse_seq(lines, first.col)
    } else if split_key(first.text).is_some() {
        parse_map(lines, first.col)
    } else {
        Node::Opaque
    }
}

fn parse_map(lines: &[Line], col: usize) -> Node {
    let mut entries = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if line.col != col {
            // Deeper lines were consumed by their entry; shallower ones cannot
            // occur in a well-formed value.
            continue;
        }
        let Some((key, rest)) = split_key(line.text) else {
            continue;
        };
        let start = i;
        let block_value = value_is_block(rest);
        // The value is every deeper line; a block sequence may also sit at the
        // key's own indentation (`key:` then `- item` in the same column).
        while i < lines.len()
            && (lines[i].col > col
                || (block_value && lines[i].col == col && dash_rest(lines[i].text).is_some()))
        {
            i += 1;
        }
        let value = if block_value {
            parse_node(&lines[start..i])
        } else {
            Node::Opaque
        };
        entries.push(Entry {
            key,
            line: line.no,
            value,
        });
    }
    Node::Map(entries)
}

fn parse_seq(lines: &[Line], col: usize) -> Node {
    let mut items = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if line.col != col {
            continue;
        }
        let Some((offset, rest)) = dash_rest(line.text) else {
            continue;
        };
        let start = i;
        while i < lines.len() && lines[i].col > col {
            i += 1;
        }
        // The item's content may begin on the dash line itself (`- name: x`):
        // treat that remainder as a line of its own at its real column.
        let mut body = Vec::with_capacity(i - start + 1);
        if !rest.is_empty() && !rest.starts_with('#') {
            body.push(Line {
                no: line.no,
                col: line.col + offset,
                text: rest,
            });
        }
        body.extend_from_slice(&lines[start..i]);
        // `- |`, `- {…}` or `- scalar` items come out opaque here.
        items.push(Item {
            line: line.no,
            value: parse_node(&body),
        });
    }
    Node::Seq(items)
}

/// For a sequence entry line (`- …` or a lone `-`): the column offset of
/// the content after the dash and that content.
fn dash_rest(text: &str) -> Option<(usize, &str)> {
    if text == "-" {
        return Some((1, ""));
    }
    let rest = text.strip_prefix("- ")?;
    let content = rest.trim_start_matches(' ');
    Some((2 + rest.len() - content.len(), content))
}

/// Splits `key: rest` (plain, `"double"` or `'single'` quoted key). Returns
/// `None` for anything that is not a block mapping entry.
fn split_key(text: &str) -> Option<(String, &str)> {
    let (key, after) = match text.chars().next()? {
        q @ ('"' | '\'') => {
            let end = text[1..].find(q)? + 1;
            (
                text[1..end].to_string(),
                text[end + 1..].trim_start_matches(' '),
            )
        }
        // Flow collections, complex keys, aliases, tags and block scalars are
        // never plain keys for our purposes.
        '{' | '[' | '?' | '*' | '!' | '|' | '>' | '#' => return None,
        _ => {
            let mut end = None;
            for (i, _) in text.match_indices(':') {
                let next = text[i + 1..].chars().next();
                if next.is_none() || next == Some(' ') {
                    end = Some(i);
                    break;
                }
            }
            let end = end?;
            (text[..end].trim_end().to_string(), &text[end..])
        }
    };
    let rest = after.strip_prefix(':')?;
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    Some((key, rest.trim()))
}

/// Whether the text after `key:` leaves the value to the following lines:
/// nothing, a comment, or only an anchor/tag.
fn value_is_block(rest: &str) -> bool {
    let mut rest = rest;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() || rest.starts_with('#') {
            return true;
        }
        if rest.starts_with('&') || rest.starts_with('!') {
            // Skip the anchor or tag token and look at what follows.
            rest = rest.find(' ').map_or("", |i| &rest[i..]);
            continue;
        }
        return false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
# leading comment
state_dir: /x          # comment

claude:
  binary: claude
  env:
    FOO: bar
  args: [--model, opus]
accounts:
  - name: main
    home: ~/a
  -   name: backup      # odd spacing after the dash
      home: ~/b
pools:
- name: auto
  prefix: ccl-
  start_index: 3
-
  name: second
  prefix: x-
notify:
  telegram: { bot_token_file: \"\", chat_id: \"\" }
  webhook:
    url: \"http://x: y\"
\"quoted key\": 1
text: |
  pools:
    fake: 1
nested:
  - - a: 1
      b: 2
";

    #[test]
    fn finds_block_mapping_keys() {
        assert_eq!(line_of(DOC, "state_dir"), Some(2));
        assert_eq!(line_of(DOC, "claude"), Some(4));
        assert_eq!(line_of(DOC, "claude.binary"), Some(5));
        assert_eq!(line_of(DOC, "claude.env.FOO"), Some(7));
        assert_eq!(line_of(DOC, "notify.webhook.url"), Some(24));
        assert_eq!(line_of(DOC, "quoted key"), Some(25));
    }

    #[test]
    fn finds_sequence_items_and_keys_on_the_dash_line() {
        assert_eq!(line_of(DOC, "accounts[0]"), Some(10));
        assert_eq!(line_of(DOC, "accounts[0].name"), Some(10));
        assert_eq!(line_of(DOC, "accounts[0].home"), Some(11));
        assert_eq!(line_of(DOC, "accounts[1].name"), Some(12));
        assert_eq!(line_of(DOC, "accounts[1].home"), Some(13));
    }

    #[test]
    fn finds_sequences_at_the_key_indentation() {
        assert_eq!(line_of(DOC, "pools[0].name"), Some(15));
        assert_eq!(line_of(DOC, "pools[0].start_index"), Some(17));
        assert_eq!(line_of(DOC, "pools[1]"), Some(18));
        assert_eq!(line_of(DOC, "pools[1].name"), Some(19));
        assert_eq!(line_of(DOC, "pools[1].prefix"), Some(20));
        // The block scalar under `text` is not mistaken for a `pools` key.
        assert_eq!(line_of(DOC, "pools[0].fake"), None);
    }

    #[test]
    fn nested_sequences() {
        assert_eq!(line_of(DOC, "nested[0][0].a"), Some(30));
        assert_eq!(line_of(DOC, "nested[0][0].b"), Some(31));
    }

    #[test]
    fn flow_values_and_missing_keys_fall_back_to_the_ancestor() {
        assert_eq!(line_of(DOC, "notify.telegram.chat_id"), None);
        assert_eq!(nearest_line(DOC, "notify.telegram.chat_id"), Some(22));
        assert_eq!(nearest_line(DOC, "claude.args[1]"), Some(8));
        assert_eq!(nearest_line(DOC, "pools[0].cwd"), Some(15));
        assert_eq!(nearest_line(DOC, "pools[7].cwd"), Some(14));
        assert_eq!(nearest_line(DOC, "swap.stop_timeout"), None);
        assert_eq!(nearest_line(DOC, ""), None);
    }

    #[test]
    fn values_with_colons_are_not_keys() {
        let doc = "a: http://x:80/y\nb:\n  - http://z\nc: 'k: v'\n";
        assert_eq!(line_of(doc, "a"), Some(1));
        assert_eq!(line_of(doc, "b[0]"), Some(3));
        assert_eq!(line_of(doc, "c"), Some(4));
    }

    #[test]
    fn crlf_documents_and_markers() {
        let doc = "---\r\nx:\r\n  y: 1\r\n...\r\n";
        assert_eq!(line_of(doc, "x.y"), Some(3));
    }

    #[test]
    fn anchors_on_block_values() {
        let doc = "base: &b\n  k: 1\nother: !!map\n  j: 2\n";
        assert_eq!(line_of(doc, "base.k"), Some(2));
        assert_eq!(line_of(doc, "other.j"), Some(4));
    }

    #[test]
    fn duplicate_keys_point_at_the_second_one() {
        assert_eq!(duplicate_key(DOC), None);
        let doc = "claude:\n  env:\n    A: 1\n    B: 2\n    A: 3\n";
        assert_eq!(duplicate_key(doc), Some(("claude.env.A".into(), 5)));
        let doc = "pools:\n  - name: a\n  - name: b\n    name: c\n";
        assert_eq!(duplicate_key(doc), Some(("pools[1].name".into(), 4)));
    }

    #[test]
    fn malformed_input_does_not_panic() {
        for doc in [
            "",
            ":",
            "- ",
            "\"unterminated: x",
            "a:\n b:\n  - \n   c",
            "{",
            "-\n-\n - x: y",
        ] {
            let _ = nearest_line(doc, "a.b[0].c");
            let _ = duplicate_key(doc);
        }
    }
}
