//! The bounded pass over a workbook before calamine opens it: calamine believes what a file
//! says about itself (it reserved room for a shared-string table's `uniqueCount`, 10^15 strings
//! in 1.9 KB, and the process aborted: an allocation failure is no panic to catch), and it keeps
//! in memory every shared string, style and relationship a part lists. So every entry is
//! unpacked here first, counting, and each XML part is read with the same parser calamine uses,
//! in bounded buffers, refusing at the first excess:
//! - more unpacked bytes than `MAX_UNPACKED_BYTES` (a zip bomb);
//! - an XML token (a tag with its attributes, a run of text, a comment) longer than
//!   `MAX_TOKEN_BYTES`, counted on the bytes as they are unpacked, before any parser buffers
//!   them; and more text in one cell, shared string or defined name (over all its runs);
//! - a shared-string table that declares, or holds, more strings than a report can use;
//! - more elements in a part calamine keeps a list of (styles, relationships, sheets);
//! - a shared-string cell whose `<v>` is not a plain index of an existing string (calamine reads
//!   `-1` or ` 3` as 0: the first string, silently);
//! - a workbook or sheet that calamine would read as XML from an entry not named `.xml`, which
//!   this pass would not have read.

use std::io::{BufRead, BufReader, Cursor, Read};

use quick_xml::events::{BytesStart, Event};

use super::IntakeError;

/// Most bytes a workbook may unpack to: a 10,000-row report is about 1 MB of XML.
pub const MAX_UNPACKED_BYTES: u64 = 32 * 1024 * 1024;
/// Most entries a workbook may have; one made by Excel has about a dozen.
const MAX_ENTRIES: usize = 1_000;
/// Longest XML token, and most text in one cell or shared string: Excel itself holds at most
/// 32,767 characters in a cell, at most 4 bytes each.
pub(super) const MAX_TOKEN_BYTES: usize = 128 * 1024;
/// Most text the shared-string table may hold in all; a 10,000-row report needs about 1 MB.
const MAX_SHARED_TEXT_BYTES: usize = 8 * 1024 * 1024;
/// Most elements in one part, outside those of cells and strings (which calamine streams or
/// bounds above): Excel's limit of 64,000 cell formats is about that many elements of styles.
const MAX_ELEMENTS: usize = 100_000;

/// Most memory the cell formats of a styles part may cost calamine, which gives each format its
/// own copy of its font and number format: a 100 KiB format code in 100,000 formats was 10 GB.
/// An Excel workbook's few hundred formats cost well under 1 MiB.
const MAX_FORMATS_BYTES: usize = 16 * 1024 * 1024;

/// Most strings the shared-string table may declare or hold: three per row (loan, client,
/// amount) and a header, with room for a clerk's other sheets.
pub(super) fn max_shared_strings(max_repayments: usize) -> usize {
    max_repayments.saturating_mul(4).saturating_add(1_000)
}

pub(super) fn check(body: &[u8], max_repayments: usize) -> Result<(), IntakeError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(body)).map_err(|e| not_a_workbook(&e))?;
    if archive.len() > MAX_ENTRIES {
        return Err(not_a_workbook(&format!(
            "{} entries, where a workbook has about a dozen",
            archive.len()
        )));
    }
    let mut found = Found {
        max_strings: max_shared_strings(max_repayments),
        ..Found::default()
    };
    let mut left = MAX_UNPACKED_BYTES;
    for i in 0..archive.len() {
        let entry = archive.by_index(i).map_err(|e| not_a_workbook(&e))?;
        if entry.size() > left {
            return Err(too_large());
        }
        let full: String = entry.name_raw().iter().map(|&b| char::from(b)).collect();
        // On the whole name: shortened (for messages), a 400-character sheet's lost its `.xml`
        // and went unscanned, its shared-string indexes unchecked.
        let lower = full.to_ascii_lowercase();
        let xml = lower.ends_with(".xml") || lower.ends_with(".rels");
        let name = super::schema::truncate(full);
        let mut input = Counted {
            inner: entry,
            left,
            read: 0,
            tokens: xml.then(Tokens::default),
            refused: None,
        };
        let scanned = if xml {
            let mut reader = quick_xml::Reader::from_reader(BufReader::new(&mut input));
            // calamine's own settings, so both read the same events.
            let config = reader.config_mut();
            config.check_end_names = false;
            config.trim_text(false);
            config.check_comments = false;
            config.expand_empty_elements = true;
            Part::new(&name, lower.ends_with("styles.xml"), &mut found).scan(&mut reader)
        } else {
            std::io::copy(&mut input, &mut std::io::sink())
                .map(drop)
                .map_err(|e| not_a_workbook(&e))
        };
        match input.refused {
            Some(Refused::TooLarge) => return Err(too_large()),
            Some(Refused::Token) => {
                return Err(malformed(format!(
                    "{name} holds a tag or text longer than {} KiB, more than Excel writes in \
                     one cell",
                    MAX_TOKEN_BYTES / 1024
                )));
            }
            None => scanned?,
        }
        left -= input.read;
    }
    if let Some((index, place)) = found.max_index {
        let strings = found.strings.unwrap_or(0);
        if index >= strings as u64 {
            return Err(malformed(format!(
                "{place} refers to shared string {index}, and the workbook has {strings} shared \
                 strings"
            )));
        }
    }
    Ok(())
}

fn not_a_workbook(error: &dyn std::fmt::Display) -> IntakeError {
    IntakeError::MalformedFile(format!(
        "the body is not an Excel workbook (.xlsx) that can be read: {}",
        super::schema::truncate(error.to_string())
    ))
}

fn malformed(detail: String) -> IntakeError {
    IntakeError::MalformedFile(format!(
        "the workbook can't be read: {detail}; save it again from Excel"
    ))
}

fn too_large() -> IntakeError {
    IntakeError::TooLargeUnpacked(format!(
        "the workbook unpacks to more than {} MiB; a report of 10,000 rows is about 1 MiB: \
         send only the report's sheet, without pictures or other sheets",
        MAX_UNPACKED_BYTES / (1024 * 1024)
    ))
}

/// What the parts say about the shared strings, over all of them.
#[derive(Default)]
struct Found {
    max_strings: usize,
    /// The fewest strings any table holds (calamine reads one of them).
    strings: Option<usize>,
    /// The largest index a shared-string cell gives, and where.
    max_index: Option<(u64, String)>,
}

#[derive(Debug, Clone, Copy)]
enum Refused {
    TooLarge,
    Token,
}

/// An entry's bytes as unpacked, counted against what is left of `MAX_UNPACKED_BYTES` and, for
/// XML, token by token; the reader fails (and says why in `refused`) at the first excess.
struct Counted<R> {
    inner: R,
    left: u64,
    read: u64,
    tokens: Option<Tokens>,
    refused: Option<Refused>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.left {
            self.refused = Some(Refused::TooLarge);
        } else if let Some(tokens) = &mut self.tokens
            && !tokens.feed(&buf[..n])
        {
            self.refused = Some(Refused::Token);
        }
        match self.refused {
            Some(_) => Err(std::io::Error::other("the workbook exceeds a bound")),
            None => Ok(n),
        }
    }
}

/// Where the bytes are in XML's lexical structure, as quick-xml splits it into events.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Lexed {
    #[default]
    Text,
    /// Just after `<`.
    Open,
    /// After `<!`, `<!-` or the first bytes of `<![CDATA[`.
    Bang,
    CommentOpen,
    CDataOpen(usize),
    /// In a tag, and in the quoted attribute value opened by this quote, if any.
    Tag(Option<u8>),
    Comment,
    CData,
    Instruction,
}

/// Counts the length of the current token on the bytes as they stream by.
#[derive(Debug, Default)]
struct Tokens {
    at: Lexed,
    len: usize,
    last: [u8; 2],
}

impl Tokens {
    /// False at the first token longer than `MAX_TOKEN_BYTES`, or a `<!` that is neither a
    /// comment nor CDATA (a DTD has no place in a workbook).
    fn feed(&mut self, bytes: &[u8]) -> bool {
        const CDATA: &[u8] = b"[CDATA[";
        for &b in bytes {
            if self.at == Lexed::Text && b == b'<' {
                self.len = 0;
            }
            self.len += 1;
            if self.len > MAX_TOKEN_BYTES {
                return false;
            }
            let ends = |last: [u8; 2], closing: &[u8]| b == b'>' && last.ends_with(closing);
            let next = match self.at {
                Lexed::Text if b == b'<' => Lexed::Open,
                Lexed::Text => Lexed::Text,
                Lexed::Open => match b {
                    b'?' => Lexed::Instruction,
                    b'!' => Lexed::Bang,
                    b'>' => Lexed::Text,
                    b'"' | b'\'' => Lexed::Tag(Some(b)),
                    _ => Lexed::Tag(None),
                },
                Lexed::Bang => match b {
                    b'-' => Lexed::CommentOpen,
                    b'[' => Lexed::CDataOpen(1),
                    _ => return false,
                },
                Lexed::CommentOpen if b == b'-' => Lexed::Comment,
                Lexed::CDataOpen(n) if b == CDATA[n] && n + 1 == CDATA.len() => Lexed::CData,
                Lexed::CDataOpen(n) if b == CDATA[n] => Lexed::CDataOpen(n + 1),
                Lexed::CommentOpen | Lexed::CDataOpen(_) => return false,
                Lexed::Tag(Some(quote)) if b == quote => Lexed::Tag(None),
                Lexed::Tag(Some(quote)) => Lexed::Tag(Some(quote)),
                Lexed::Tag(None) => match b {
                    b'>' => Lexed::Text,
                    b'"' | b'\'' => Lexed::Tag(Some(b)),
                    _ => Lexed::Tag(None),
                },
                Lexed::Comment if ends(self.last, b"--") => Lexed::Text,
                Lexed::CData if ends(self.last, b"]]") => Lexed::Text,
                Lexed::Instruction if ends(self.last, b"?") => Lexed::Text,
                at @ (Lexed::Comment | Lexed::CData | Lexed::Instruction) => at,
            };
            if next == Lexed::Text && self.at != Lexed::Text {
                self.len = 0;
            }
            // The `--` and `]]` that open a comment or CDATA don't close it.
            self.last = if matches!(next, Lexed::Comment | Lexed::CData) && next != self.at {
                [0, 0]
            } else {
                [self.last[1], b]
            };
            self.at = next;
        }
        true
    }
}

/// Where the text being read goes, when calamine joins all its runs into one string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Joined {
    Cell,
    SharedString,
    DefinedName,
}

/// One XML part, read event by event.
struct Part<'a> {
    name: &'a str,
    found: &'a mut Found,
    elements: usize,
    /// The strings of this part's shared-string table, while in it.
    table: Option<usize>,
    shared_text: usize,
    /// The text being joined, and how long it is so far.
    joined: Option<(Joined, usize)>,
    /// The cell being read: where it is, and whether its value is a shared string's index.
    cell: Option<String>,
    shared: bool,
    /// Just after the `<v>` of a shared-string cell: the next event is its index.
    index_next: bool,
    /// In a styles part: the cell formats so far, and the longest attribute value (what each
    /// format may copy, as a font name or a number format code).
    formats: Option<(usize, usize)>,
}

impl<'a> Part<'a> {
    /// `styles`: the part is a styles part, by its whole name (`name` may be shortened).
    fn new(name: &'a str, styles: bool, found: &'a mut Found) -> Self {
        Self {
            name,
            found,
            elements: 0,
            table: None,
            shared_text: 0,
            joined: None,
            cell: None,
            shared: false,
            index_next: false,
            formats: styles.then_some((0, 0)),
        }
    }

    fn scan<R: BufRead>(mut self, xml: &mut quick_xml::Reader<R>) -> Result<(), IntakeError> {
        let mut buf = Vec::with_capacity(1024);
        loop {
            buf.clear();
            let event = xml.read_event_into(&mut buf).map_err(|e| {
                not_a_workbook(&format!(
                    "{}: {}",
                    self.name,
                    super::schema::truncate(e.to_string())
                ))
            })?;
            let index_next = std::mem::take(&mut self.index_next);
            match event {
                Event::Start(e) => self.start(&e)?,
                Event::End(e) => self.end(e.local_name().as_ref()),
                Event::Text(t) if index_next => {
                    self.index(t.as_ref())?;
                    self.text(t.len())?;
                }
                Event::Text(t) => self.text(t.len())?,
                Event::CData(t) => self.text(t.len())?,
                Event::GeneralRef(r) => self.text(r.len() + 2)?,
                Event::Eof => return Ok(()),
                _ => {}
            }
        }
    }

    fn start(&mut self, e: &BytesStart<'_>) -> Result<(), IntakeError> {
        let local = e.local_name();
        let local = local.as_ref();
        if !streamed(local) {
            self.elements += 1;
            if self.elements > MAX_ELEMENTS {
                return Err(malformed(format!(
                    "{} has more than {MAX_ELEMENTS} elements",
                    self.name
                )));
            }
        }
        if let Some((formats, longest)) = &mut self.formats {
            let mut attributes = e.attributes();
            attributes.with_checks(false);
            for attribute in attributes {
                let attribute = attribute.map_err(|e| not_a_workbook(&e))?;
                *longest = (*longest).max(attribute.value.len());
            }
            // And as calamine splits them, should the two ever differ.
            for (_, value) in raw_attributes(e.attributes_raw()) {
                *longest = (*longest).max(value.len());
            }
            *formats += usize::from(local == "xf");
            // A font name, a format code and the rest of the font, for each.
            let each = 3 * *longest + std::mem::size_of::<calamine::Style>();
            if formats.saturating_mul(each) > MAX_FORMATS_BYTES {
                return Err(IntakeError::MalformedFile(format!(
                    "the workbook can't be read: {} has {formats} cell formats of up to \
                     {longest} bytes each, more than a report needs: copy the report's cells \
                     into a new workbook",
                    self.name
                )));
            }
        }
        match local {
            "sst" => {
                // `count` (the cells that refer to a string, on every sheet) sizes nothing.
                if let Some(declared) = every(e, "uniqueCount")?.into_iter().find(|declared| {
                    plain_number(declared).is_none_or(|n| n > self.found.max_strings as u64)
                }) {
                    return Err(self.too_many_strings(&format!(
                        "declares uniqueCount=\"{}\"",
                        super::schema::truncate(declared)
                    )));
                }
                self.table = Some(0);
            }
            "si" if self.table.is_some() => {
                let strings = self.table.unwrap_or(0) + 1;
                if strings > self.found.max_strings {
                    return Err(self.too_many_strings(&format!(
                        "holds more than {} shared strings",
                        self.found.max_strings
                    )));
                }
                self.table = Some(strings);
                self.joined = Some((Joined::SharedString, 0));
            }
            "c" => {
                self.joined = Some((Joined::Cell, 0));
                let place = attribute(e, "r")?.map_or("a cell".into(), |r| {
                    format!("cell {}", super::schema::truncate(r))
                });
                self.cell = Some(format!("{place} of {}", self.name));
                self.shared = every(e, "t")?.iter().any(|t| t == "s");
            }
            "v" => self.index_next = self.shared && self.cell.is_some(),
            "definedName" => self.joined = Some((Joined::DefinedName, 0)),
            "Relationship" => {
                let read_as_xml = every(e, "Type")?.iter().any(|kind| {
                    matches!(
                        kind.rsplit('/').next(),
                        Some("officeDocument" | "worksheet" | "chartsheet" | "dialogsheet")
                    )
                });
                let not_xml = every(e, "Target")?
                    .into_iter()
                    .find(|target| !target.to_ascii_lowercase().ends_with(".xml"));
                if read_as_xml && let Some(target) = not_xml {
                    return Err(not_a_workbook(&format!(
                        "{} names a part that is not XML: {:?}",
                        self.name,
                        super::schema::truncate(target)
                    )));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn end(&mut self, local: &str) {
        match (local, self.joined) {
            ("c", Some((Joined::Cell, _)))
            | ("si", Some((Joined::SharedString, _)))
            | ("definedName", Some((Joined::DefinedName, _))) => self.joined = None,
            ("sst", _) => {
                if let Some(strings) = self.table.take() {
                    self.found.strings =
                        Some(self.found.strings.map_or(strings, |s| s.min(strings)));
                }
            }
            _ => {}
        }
        if local == "c" {
            self.cell = None;
            self.shared = false;
        }
    }

    fn text(&mut self, len: usize) -> Result<(), IntakeError> {
        let Some((joined, so_far)) = &mut self.joined else {
            return Ok(());
        };
        *so_far += len;
        if *so_far > MAX_TOKEN_BYTES {
            let what = match joined {
                Joined::Cell => self.cell.clone().unwrap_or_else(|| "a cell".into()),
                Joined::SharedString => format!("a shared string of {}", self.name),
                Joined::DefinedName => format!("a defined name of {}", self.name),
            };
            return Err(malformed(format!(
                "{what} holds more than {} KiB of text, more than Excel holds in one cell",
                MAX_TOKEN_BYTES / 1024
            )));
        }
        if *joined == Joined::SharedString {
            self.shared_text += len;
            if self.shared_text > MAX_SHARED_TEXT_BYTES {
                return Err(self.too_many_strings(&format!(
                    "holds more than {} MiB of shared strings",
                    MAX_SHARED_TEXT_BYTES / (1024 * 1024)
                )));
            }
        }
        Ok(())
    }

    /// The `<v>` of a shared-string cell: a plain index, kept if the largest so far.
    fn index(&mut self, text: &str) -> Result<(), IntakeError> {
        let place = self.cell.clone().unwrap_or_default();
        let shown = super::schema::truncate(text.to_owned());
        let Some(index) = plain_number(text) else {
            return Err(malformed(format!(
                "{place} gives {shown:?} as the number of its shared string, which is not one"
            )));
        };
        if self
            .found
            .max_index
            .as_ref()
            .is_none_or(|(max, _)| index > *max)
        {
            self.found.max_index = Some((index, place));
        }
        Ok(())
    }

    fn too_many_strings(&self, what: &str) -> IntakeError {
        IntakeError::MalformedFile(format!(
            "the workbook can't be read: {} {what}; a report uses at most {} shared strings and \
             {} MiB of their text: send only the report's sheet",
            self.name,
            self.found.max_strings,
            MAX_SHARED_TEXT_BYTES / (1024 * 1024)
        ))
    }
}

/// A cell's and a string's own elements, and a rich text's run properties: calamine streams
/// them, or joins them into one bounded string, and keeps no list of them.
fn streamed(local: &str) -> bool {
    matches!(
        local,
        "row"
            | "c"
            | "v"
            | "f"
            | "is"
            | "si"
            | "r"
            | "t"
            | "rPr"
            | "rPh"
            | "phoneticPr"
            | "b"
            | "i"
            | "u"
            | "strike"
            | "sz"
            | "color"
            | "rFont"
            | "family"
            | "scheme"
            | "vertAlign"
            | "charset"
            | "outline"
            | "shadow"
            | "condense"
            | "extend"
    )
}

/// Digits only, as Excel writes a count or an index: no sign, space or other base.
fn plain_number(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// An attribute's raw value, by local name; a malformed attribute list is refused, as calamine
/// would refuse it.
fn attribute(e: &BytesStart<'_>, name: &str) -> Result<Option<String>, IntakeError> {
    let mut attributes = e.attributes();
    attributes.with_checks(false);
    for attribute in attributes {
        let attribute = attribute.map_err(|e| not_a_workbook(&e))?;
        if attribute.key.local_name().as_ref() == name {
            return Ok(Some(attribute.value.into_owned()));
        }
    }
    Ok(None)
}

/// Every value calamine could take for an attribute: it takes some by exact name, some by
/// local name, the first or a later one of twins, with its own splitting of the tag; a check
/// of the first `x:uniqueCount="5"` let calamine reserve the `uniqueCount="1000000000000000"`
/// after it, and abort. So the tag is split as calamine splits it, and every value whose key
/// has this local name (with or without a prefix) is returned, up to where calamine would stop
/// at a malformed attribute.
fn every(e: &BytesStart<'_>, name: &str) -> Result<Vec<String>, IntakeError> {
    // quick-xml's split too, in case the two ever differ; it refuses a malformed list.
    let first = attribute(e, name)?;
    Ok(raw_attributes(e.attributes_raw())
        .filter(|(key, _)| key.rsplit(':').next() == Some(name))
        .map(|(_, value)| value.to_owned())
        .chain(first)
        .collect())
}

/// A tag's attributes split as calamine 0.38 splits them (`attrs.rs`): a key runs to the next
/// `=`, a value between quotes; it stops at the first malformed one.
fn raw_attributes(raw: &str) -> impl Iterator<Item = (&str, &str)> {
    let bytes = raw.as_bytes();
    let mut pos = 0;
    std::iter::from_fn(move || {
        while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let key_start = pos;
        while pos < bytes.len() && bytes[pos] != b'=' {
            pos += 1;
        }
        if pos >= bytes.len() {
            return None;
        }
        let key = raw[key_start..pos].trim_ascii();
        pos += 1;
        while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let quote = *bytes.get(pos).filter(|q| matches!(q, b'"' | b'\''))?;
        pos += 1;
        let value_start = pos;
        while pos < bytes.len() && bytes[pos] != quote {
            pos += 1;
        }
        let value = &raw[value_start..pos];
        pos = (pos + 1).min(bytes.len());
        Some((key, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn longest_token_fits(xml: &str) -> bool {
        let mut tokens = Tokens::default();
        tokens.feed(xml.as_bytes())
    }

    #[test]
    fn tokens_are_counted_as_quick_xml_splits_them() {
        let long = "x".repeat(MAX_TOKEN_BYTES);
        assert!(longest_token_fits(&format!("<a>{long}</a>")));
        assert!(!longest_token_fits(&format!("<a>{long}x</a>")));
        // A `>` inside a quoted value, a comment or CDATA does not end the token.
        let half = "x".repeat(MAX_TOKEN_BYTES / 2);
        for (open, close) in [
            ("<a b=\"", "\">"),
            ("<a b='", "'>"),
            ("<!--", "-->"),
            ("<![CDATA[", "]]>"),
            ("<?pi ", "?>"),
        ] {
            let one = format!("{open}{half}>{half}{close}");
            assert!(!longest_token_fits(&one), "{open}");
            let short = format!("{open}a>b{close}<c>{half}</c><d>{half}</d>");
            assert!(longest_token_fits(&short), "{open}");
        }
        assert!(!longest_token_fits("<!DOCTYPE x>"));
    }

    fn zip_of(name: &str, xml: &str) -> Vec<u8> {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(xml.as_bytes()).unwrap();
        zip.finish().unwrap().into_inner()
    }

    #[test]
    fn lists_calamine_keeps_are_bounded_and_rich_text_is_not_one() {
        let run = "<r><rPr><b/><sz val=\"11\"/><color theme=\"1\"/><rFont val=\"Calibri\"/>\
                   <family val=\"2\"/><scheme val=\"minor\"/></rPr><t>L-1</t></r>";
        let rich = format!(
            "<sst>{}</sst>",
            format!("<si>{run}{run}</si>").repeat(20_000)
        );
        assert!(check(&zip_of("xl/sharedStrings.xml", &rich), 10_000).is_ok());

        let sheets = format!(
            "<workbook><sheets>{}</sheets></workbook>",
            "<sheet name=\"s\" r:id=\"rId1\"/>".repeat(MAX_ELEMENTS)
        );
        let refused = check(&zip_of("xl/workbook.xml", &sheets), 10_000).unwrap_err();
        assert!(refused.to_string().contains("elements"), "{refused}");
    }

    #[test]
    fn counts_and_indexes_are_plain_numbers() {
        assert_eq!(plain_number("12"), Some(12));
        assert_eq!(plain_number("007"), Some(7));
        for bad in [
            "",
            "-1",
            " 1",
            "1 ",
            "+1",
            "0x1",
            "1e3",
            "18446744073709551616",
        ] {
            assert_eq!(plain_number(bad), None, "{bad:?}");
        }
    }
}
