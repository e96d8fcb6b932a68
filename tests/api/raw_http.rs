//! HTTP/1.1 by hand, for what a well-behaved client never does: send a body in part and wait.

use crate::helpers::DEADLINE;

/// Sends a request head and only the start of its body on a raw connection, keeps the
/// connection open without sending the rest, and returns the gateway's status line and answer
/// if one comes within `DEADLINE` (`None` if the gateway still waits for the body).
pub async fn answer_to_partial_request(
    address: &str,
    head: &str,
    body_start: &[u8],
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = address.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(host).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body_start).await.unwrap();
    let read = async {
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
            if complete_http_answer(&answer) {
                break;
            }
        }
        answer
    };
    let answer = tokio::time::timeout(DEADLINE, read).await.ok()?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text))
}

/// Whether `answer` holds a whole HTTP/1.1 answer (its head and `Content-Length` bytes).
fn complete_http_answer(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    body.len() >= length
}
