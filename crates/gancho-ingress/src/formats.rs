//! Bodies that are not JSON, read as the JSON object the adapters' pointers then read: HTML
//! forms (`application/x-www-form-urlencoded`, Twilio's callbacks) and XML documents. Both
//! are bounded by the body's size; the XML reader also refuses a DOCTYPE (no entity is ever
//! defined) and nesting past a fixed depth.

use serde_json::Value;

/// An HTML form body (`application/x-www-form-urlencoded`) as the text of a JSON object of its
/// fields: a field given once is a string, one given more than once an array of its values, in
/// order.
pub fn form_to_json(body: &[u8]) -> String {
    let mut object = serde_json::Map::new();
    for (name, value) in url::form_urlencoded::parse(body) {
        let value = Value::String(value.into_owned());
        match object.get_mut(name.as_ref()) {
            None => {
                object.insert(name.into_owned(), value);
            }
            Some(Value::Array(values)) => values.push(value),
            Some(first) => {
                let first = first.take();
                object.insert(name.into_owned(), Value::Array(vec![first, value]));
            }
        }
    }
    Value::Object(object).to_string()
}

/// How deep XML elements may nest.
const MAX_XML_DEPTH: usize = 64;

/// An XML body as the text of a JSON object: the root element's content. An element with only
/// text is a string; one with attributes or children an object, its attributes as `@name`,
/// its children by name (a name repeated: an array, in order) and its text as `#text`. The five
/// predefined entities and character references are resolved; a DOCTYPE (and so any entity
/// definition) is refused, as is nesting deeper than 64.
pub fn xml_to_json(body: &str) -> Result<String, String> {
    use quick_xml::events::Event;
    struct Node {
        name: String,
        fields: serde_json::Map<String, Value>,
        text: String,
    }
    fn value(node: Node) -> Value {
        let text = node.text.trim();
        if node.fields.is_empty() {
            return Value::String(text.to_owned());
        }
        let mut fields = node.fields;
        if !text.is_empty() {
            fields.insert("#text".to_owned(), Value::String(text.to_owned()));
        }
        Value::Object(fields)
    }
    fn attach(parent: &mut Node, name: String, child: Value) {
        match parent.fields.get_mut(&name) {
            None => {
                parent.fields.insert(name, child);
            }
            // Elements are strings or objects: an array is a name seen before.
            Some(Value::Array(values)) => values.push(child),
            Some(first) => {
                let first = first.take();
                parent.fields.insert(name, Value::Array(vec![first, child]));
            }
        }
    }
    let bad = |err: &dyn std::fmt::Display| format!("body is not valid XML: {err}");
    let open = |start: &quick_xml::events::BytesStart<'_>| -> Result<Node, String> {
        let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
        let mut fields = serde_json::Map::new();
        for attribute in start.attributes() {
            let attribute = attribute.map_err(|e| bad(&e))?;
            let key = format!("@{}", String::from_utf8_lossy(attribute.key.as_ref()));
            let value = attribute.unescape_value().map_err(|e| bad(&e))?;
            fields.insert(key, Value::String(value.into_owned()));
        }
        Ok(Node {
            name,
            fields,
            text: String::new(),
        })
    };
    let mut reader = quick_xml::Reader::from_str(body);
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Value> = None;
    loop {
        let event = reader.read_event().map_err(|e| bad(&e))?;
        match event {
            Event::Start(start) => {
                if root.is_some() {
                    return Err(bad(&"more than one root element"));
                }
                if stack.len() >= MAX_XML_DEPTH {
                    return Err(bad(&format!("elements nest deeper than {MAX_XML_DEPTH}")));
                }
                stack.push(open(&start)?);
            }
            Event::Empty(start) => {
                let node = open(&start)?;
                let name = node.name.clone();
                match stack.last_mut() {
                    Some(parent) => attach(parent, name, value(node)),
                    None if root.is_none() => root = Some(value(node)),
                    None => return Err(bad(&"more than one root element")),
                }
            }
            Event::End(_) => {
                let Some(node) = stack.pop() else {
                    return Err(bad(&"an end tag without its start"));
                };
                let name = node.name.clone();
                match stack.last_mut() {
                    Some(parent) => attach(parent, name, value(node)),
                    None => root = Some(value(node)),
                }
            }
            Event::Text(text) => {
                if let Some(node) = stack.last_mut() {
                    node.text
                        .push_str(&text.xml_content().map_err(|e| bad(&e))?);
                }
            }
            Event::CData(data) => {
                if let Some(node) = stack.last_mut() {
                    node.text.push_str(&data.decode().map_err(|e| bad(&e))?);
                }
            }
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref().map_err(|e| bad(&e))? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = reference.decode().map_err(|e| bad(&e))?;
                        quick_xml::escape::resolve_xml_entity(&name)
                            .ok_or_else(|| bad(&format!("unknown entity &{name};")))?
                            .to_owned()
                    }
                };
                if let Some(node) = stack.last_mut() {
                    node.text.push_str(&resolved);
                }
            }
            Event::DocType(_) => return Err(bad(&"a DOCTYPE is not accepted")),
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(bad(&"an element is not closed"));
    }
    match root {
        Some(Value::String(text)) => Ok(serde_json::json!({ "#text": text }).to_string()),
        Some(value) => Ok(value.to_string()),
        None => Err(bad(&"no root element")),
    }
}
