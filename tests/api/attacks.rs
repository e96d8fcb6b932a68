//! A fresh look as an attacker at the file intake (issue 22's last condition): what the bounded
//! pass over a workbook checks must be what calamine then reads.

use std::process::Stdio;

use crate::helpers::*;
use crate::hostile_files::validate;
use crate::workbooks::{with_shared_strings, workbook, zipped};

const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

fn assert_malformed(answer: &Answer, says: &str) {
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert_eq!(
        answer.body["type"], "/problems/malformed-file",
        "{}",
        answer.text
    );
    let detail = answer.body["detail"].as_str().unwrap();
    assert!(detail.contains(says), "{detail}");
}

/// The gateway binary on its own Redis, answering.
async fn binary() -> (TestRedis, tokio::process::Child, Remote) {
    let redis = TestRedis::start().await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = redis.dir().join("gateway.toml");
    std::fs::write(
        &config,
        test_config(&redis.url()).replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_repayment-gateway"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let gateway = Remote::ready(port).await;
    (redis, child, gateway)
}

const SHARED_ROWS: &str = r#"<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c><c r="C1" t="s"><v>2</v></c></row><row r="2"><c r="A2" t="s"><v>3</v></c><c r="B2" t="s"><v>4</v></c><c r="C2"><v>25</v></c></row>"#;

/// calamine takes `uniqueCount` by its exact name; a prefixed twin placed first must not be
/// the only one checked. In the real binary: the allocation failure aborts the process.
#[tokio::test]
async fn a_prefixed_twin_attribute_does_not_hide_the_count_calamine_reserves() {
    let (_redis, mut child, gateway) = binary().await;
    let body = workbook(
        SHARED_ROWS,
        Some(
            r#"<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:x="urn:x" x:uniqueCount="5" uniqueCount="1000000000000000"><si><t>loan_id</t></si><si><t>client_id</t></si><si><t>amount</t></si><si><t>L-1</t></si><si><t>C-1</t></si></sst>"#,
        ),
    );
    let sent = reqwest::Client::new()
        .post(format!(
            "{}/v1/repayments/validate?period=2026-10",
            gateway.base
        ))
        .header("X-Api-Key", plain_key(NAIROBI))
        .header("Content-Type", XLSX)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(error) => panic!(
            "no answer ({error}); the gateway exited with {:?}",
            child.try_wait()
        ),
    };
    assert_eq!(response.status(), 400);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/malformed-file", "{problem}");
    assert!(child.try_wait().unwrap().is_none(), "the gateway exited");
    child.start_kill().unwrap();
}

/// A cell whose exact `t` says "shared string" behind a prefixed `t` that doesn't: calamine
/// reads `-1` as the first string (the header's `loan_id`), silently.
#[tokio::test]
async fn a_prefixed_twin_attribute_does_not_hide_a_shared_string_cell() {
    let app = spawn(Backend::Embedded).await;
    let strings = ["loan_id", "client_id", "amount", "L-1", "C-1"];
    let rows = r#"<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c><c r="C1" t="s"><v>2</v></c></row><row r="2"><c r="A2" xmlns:x="urn:x" x:t="n" t="s"><v>-1</v></c><c r="B2" t="s"><v>4</v></c><c r="C2"><v>25</v></c></row>"#;
    assert_malformed(
        &validate(&app, XLSX, with_shared_strings(rows, &strings)).await,
        "cell A2",
    );
}

/// A sheet's relationship whose exact `Target` is not XML, behind a prefixed `Target` that is:
/// calamine would read the unscanned entry as the sheet, a 200 KiB cell and all.
#[tokio::test]
async fn a_prefixed_twin_attribute_does_not_hide_a_sheet_the_scan_skipped() {
    let app = spawn(Backend::Embedded).await;
    let huge = "x".repeat(200 * 1024);
    let sheet = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>{huge}</t></is></c></row></sheetData></worksheet>"#
    );
    let entries = [
        (
            "_rels/.rels",
            br#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>"#.to_vec(),
        ),
        (
            "xl/workbook.xml",
            br#"<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>"#.to_vec(),
        ),
        (
            "xl/_rels/workbook.xml.rels",
            br#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships" xmlns:x="urn:x"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" x:Target="worksheets/sheet1.xml" Target="worksheets/sheet1.bin"/></Relationships>"#.to_vec(),
        ),
        ("xl/worksheets/sheet1.bin", sheet.into_bytes()),
    ];
    assert_malformed(&validate(&app, XLSX, zipped(&entries)).await, "not XML");
}

/// `unpacked` zero bytes, gzipped (the deflate stream taken from a zip entry; the trailer is
/// never reached).
fn gzip_bomb(unpacked: usize) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(9));
    zip.start_file("zeros", options).unwrap();
    let mib = vec![0; 1024 * 1024];
    for _ in 0..unpacked / mib.len() {
        zip.write_all(&mib).unwrap();
    }
    let zipped = zip.finish().unwrap().into_inner();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zipped)).unwrap();
    let mut body = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    archive
        .by_index_raw(0)
        .unwrap()
        .read_to_end(&mut body)
        .unwrap();
    body.extend_from_slice(&[0; 8]);
    body
}

fn peak_rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024
}

/// A body is never inflated by the server: `Content-Encoding: gzip` on the sign-in form (no
/// key needed) made actix inflate each received chunk whole before the form's 256 KiB limit
/// could refuse it: 8 bodies of 200 KiB took the process from 40 MB to 1,024 MB. (48 MiB
/// each here, as deflating more takes long in a debug build.)
#[tokio::test]
async fn a_gzip_body_is_never_inflated_by_the_server() {
    let (_redis, mut child, gateway) = binary().await;
    let pid = child.id().unwrap();
    let bomb = gzip_bomb(48 * 1024 * 1024);
    assert!(bomb.len() < 256 * 1024, "{} bytes", bomb.len());
    let before = peak_rss_mb(pid);
    let client = reqwest::Client::new();
    let sent = (0..8).map(|_| {
        client
            .post(format!("{}/web/sign-in", gateway.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Content-Encoding", "gzip")
            .body(bomb.clone())
            .send()
    });
    for answer in futures_util::future::join_all(sent).await {
        let answer = answer.expect("an answer");
        // Not "too large": the 48 KiB sent are read as they are, a form without its token.
        assert_eq!(answer.status(), 403);
    }
    let after = peak_rss_mb(pid);
    assert!(child.try_wait().unwrap().is_none(), "the gateway exited");
    assert!(
        after < before + 100,
        "peak RSS went from {before} MB to {after} MB"
    );
    child.start_kill().unwrap();
}

/// An entry's name is shortened for messages; whether it is XML (and so token-scanned, its
/// shared-string indexes checked) must be decided on the whole name: a sheet at a 400-character
/// path was only counted, and calamine read its `-1` as the first string.
#[tokio::test]
async fn a_sheet_with_a_long_name_is_scanned_as_xml() {
    let app = spawn(Backend::Embedded).await;
    let long = format!("worksheets/{}.xml", "a".repeat(400));
    let rows = r#"<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c><c r="C1" t="s"><v>2</v></c></row><row r="2"><c r="A2" t="s"><v>-1</v></c><c r="B2" t="s"><v>4</v></c><c r="C2"><v>25</v></c></row>"#;
    let sheet = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>{rows}</sheetData></worksheet>"#
    );
    let strings = r#"<?xml version="1.0" encoding="UTF-8"?><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="5" uniqueCount="5"><si><t>loan_id</t></si><si><t>client_id</t></si><si><t>amount</t></si><si><t>L-1</t></si><si><t>C-1</t></si></sst>"#;
    let entries = [
        (
            "_rels/.rels".to_owned(),
            br#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>"#.to_vec(),
        ),
        (
            "xl/workbook.xml".to_owned(),
            br#"<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>"#.to_vec(),
        ),
        (
            "xl/_rels/workbook.xml.rels".to_owned(),
            format!(r#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="{long}"/></Relationships>"#).into_bytes(),
        ),
        (format!("xl/{long}"), sheet.into_bytes()),
        ("xl/sharedStrings.xml".to_owned(), strings.as_bytes().to_vec()),
    ];
    let entries: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(name, bytes)| (name.as_str(), bytes.clone()))
        .collect();
    assert_malformed(&validate(&app, XLSX, zipped(&entries)).await, "cell A2");
}
