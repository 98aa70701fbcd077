//! Canonical XML 1.1 (W3C, 2 May 2008), without comments, over a roxmltree document: the
//! subset that XML-DSig's enveloped signatures in NVIDIA's RIMs use (the whole document minus one
//! element, and one element with its descendants).
//!
//! What is implemented, by section of the specification (C14N 1.1 §2 refers to C14N 1.0 §2.3
//! for the processing model):
//! * §2.3 document order; no XML declaration, no DTD; comments and processing instructions
//!   outside the root are not emitted (these documents have none; anything else is refused).
//! * §2.3 element nodes: `<` QName, namespace nodes, attribute nodes, `>`, children, `</` QName
//!   `>` — empty elements are written with a start and an end tag.
//! * §2.3 namespace axis: a namespace node is emitted when the nearest emitted ancestor element
//!   does not have the same prefix bound to the same URI (or, for the top element of a subset,
//!   always; the `xml` prefix never). Sorted by prefix, the default namespace first. `xmlns=""`
//!   is emitted when an element has no default namespace but its nearest emitted ancestor has one.
//! * §2.3 attribute axis: sorted by namespace URI (none first), then local name.
//! * §2.3 text: `&` `<` `>` and CR escaped; attribute values: `&` `<` `"` TAB LF CR escaped.
//! * C14N 1.1 §2.4 (xml:id, xml:base, and inheritance of xml:lang / xml:space into a subset) is
//!   not needed for these documents: a subset whose ancestors carry `xml:` attributes is refused.

use roxmltree::{Node, NodeType};
use thiserror::Error;

/// Why a node could not be canonicalised.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum C14nError {
    /// The document uses something this implementation does not canonicalise.
    #[error("canonicalisation: {0} is not supported")]
    Unsupported(&'static str),
}

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Canonicalises `top` and its descendants (as the subset `top`'s subtree), leaving out the
/// subtree of `exclude` when it is inside. For the whole document minus an enveloped signature,
/// pass the root element and the Signature element.
pub fn canonicalize(
    top: Node<'_, '_>,
    exclude: Option<Node<'_, '_>>,
) -> Result<Vec<u8>, C14nError> {
    if top
        .ancestors()
        .skip(1)
        .any(|a| a.attributes().any(|at| at.namespace() == Some(XML_NS)))
    {
        return Err(C14nError::Unsupported(
            "an xml: attribute inherited into a subset",
        ));
    }
    let mut out = Vec::new();
    // Namespaces emitted so far, as (prefix, uri) per open element; empty for the subset's top.
    let mut stack: Vec<Vec<(String, String)>> = Vec::new();
    element(top, exclude.map(|e| e.id()), &mut stack, &mut out)?;
    Ok(out)
}

fn qname<'i>(node: Node<'_, 'i>) -> &'i str {
    let text = node.document().input_text();
    let start = node.range().start + 1;
    let rest = &text[start..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .unwrap_or(rest.len());
    &rest[..end]
}

fn element(
    node: Node<'_, '_>,
    exclude: Option<roxmltree::NodeId>,
    stack: &mut Vec<Vec<(String, String)>>,
    out: &mut Vec<u8>,
) -> Result<(), C14nError> {
    let name = qname(node);
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());

    // The in-scope namespaces in effect at the nearest emitted ancestor.
    let parent_scope: Vec<(String, String)> = stack.last().cloned().unwrap_or_default();
    let mut ns: Vec<(String, String)> = node
        .namespaces()
        .filter(|n| n.name() != Some("xml"))
        .map(|n| (n.name().unwrap_or("").to_string(), n.uri().to_string()))
        .collect();
    ns.sort();
    ns.dedup_by(|a, b| a.0 == b.0);
    for (prefix, uri) in &ns {
        if parent_scope.iter().any(|(p, u)| p == prefix && u == uri) {
            continue;
        }
        if prefix.is_empty() {
            out.extend_from_slice(b" xmlns=\"");
        } else {
            out.extend_from_slice(b" xmlns:");
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(b"=\"");
        }
        escape_attr(uri, out);
        out.push(b'"');
    }
    let has_default = ns.iter().any(|(p, u)| p.is_empty() && !u.is_empty());
    let parent_default = parent_scope
        .iter()
        .any(|(p, u)| p.is_empty() && !u.is_empty());
    if !has_default && parent_default {
        out.extend_from_slice(b" xmlns=\"\"");
    }

    let text = node.document().input_text();
    let mut attrs: Vec<_> = node.attributes().collect();
    attrs.sort_by(|a, b| {
        (a.namespace().unwrap_or(""), a.name()).cmp(&(b.namespace().unwrap_or(""), b.name()))
    });
    for a in attrs {
        out.push(b' ');
        out.extend_from_slice(text[a.range_qname()].as_bytes());
        out.extend_from_slice(b"=\"");
        escape_attr(a.value(), out);
        out.push(b'"');
    }
    out.push(b'>');

    stack.push(ns);
    for child in node.children() {
        if Some(child.id()) == exclude {
            continue;
        }
        match child.node_type() {
            NodeType::Element => element(child, exclude, stack, out)?,
            NodeType::Text => escape_text(child.text().unwrap_or(""), out),
            NodeType::Comment => {}
            NodeType::PI => return Err(C14nError::Unsupported("a processing instruction")),
            NodeType::Root => return Err(C14nError::Unsupported("a nested document")),
        }
    }
    stack.pop();
    out.extend_from_slice(b"</");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
    Ok(())
}

fn escape_text(s: &str, out: &mut Vec<u8>) {
    for c in s.chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '>' => out.extend_from_slice(b"&gt;"),
            '\r' => out.extend_from_slice(b"&#xD;"),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

fn escape_attr(s: &str, out: &mut Vec<u8>) {
    for c in s.chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '"' => out.extend_from_slice(b"&quot;"),
            '\t' => out.extend_from_slice(b"&#x9;"),
            '\n' => out.extend_from_slice(b"&#xA;"),
            '\r' => out.extend_from_slice(b"&#xD;"),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c14n(xml: &str) -> String {
        let doc = roxmltree::Document::parse(xml).unwrap();
        String::from_utf8(canonicalize(doc.root_element(), None).unwrap()).unwrap()
    }

    #[test]
    fn empty_elements_sorted_attributes_and_redundant_namespaces() {
        // C14N 1.0 §3.3 (start and end tags, attribute order) and §3.5-style namespace pruning.
        let got = c14n(
            r#"<a xmlns:z="urn:z" xmlns="urn:d" b="2" a='1'><z:c z:q="x" xmlns:z="urn:z" p="&amp;&#9;"/></a>"#,
        );
        assert_eq!(
            got,
            r#"<a xmlns="urn:d" xmlns:z="urn:z" a="1" b="2"><z:c p="&amp;&#x9;" z:q="x"></z:c></a>"#
        );
    }

    #[test]
    fn subset_top_carries_inherited_namespaces() {
        let xml = r#"<r xmlns="urn:d" xmlns:ds="urn:ds"><ds:S><ds:I>t &lt; u</ds:I></ds:S></r>"#;
        let doc = roxmltree::Document::parse(xml).unwrap();
        let s = doc.descendants().find(|n| n.has_tag_name("S")).unwrap();
        let got = String::from_utf8(canonicalize(s, None).unwrap()).unwrap();
        assert_eq!(
            got,
            r#"<ds:S xmlns="urn:d" xmlns:ds="urn:ds"><ds:I>t &lt; u</ds:I></ds:S>"#
        );
    }
}
