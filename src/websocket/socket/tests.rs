//! The frame layer against raw bytes on a real TCP connection, and against tungstenite as the
//! client (the library our integration tests and many Rust clients use).

use futures::{SinkExt, StreamExt};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        protocol::{CloseFrame, Role, frame::coding::CloseCode},
    },
};

use super::*;

const LIMIT: usize = 1024;
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The server's socket and the client's end of one TCP connection; `read_ahead` is what the
/// server already read with the upgrade request.
async fn pair(read_ahead: &[u8]) -> (Socket, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (Socket::new(server, read_ahead, LIMIT), client)
}

/// A masked client frame: `first` is the FIN bit and opcode byte.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![first];
    match payload.len() {
        length @ 0..=125 => bytes.push(0x80 | length as u8),
        length @ 126..=65535 => {
            bytes.push(0x80 | 126);
            bytes.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            bytes.push(0x80 | 127);
            bytes.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    bytes.extend_from_slice(&MASK);
    bytes.extend(payload.iter().enumerate().map(|(index, byte)| byte ^ MASK[index % 4]));
    bytes
}

const TEXT: u8 = 0x81;
const TEXT_FIRST: u8 = 0x01;
const CONTINUE_LAST: u8 = 0x80;
const CONTINUE: u8 = 0x00;
const BINARY: u8 = 0x82;
const CLOSE: u8 = 0x88;
const PING: u8 = 0x89;

async fn next(socket: &mut Socket) -> Option<Result<Incoming, ReadError>> {
    std::future::poll_fn(|cx| socket.poll_next(cx)).await
}

fn text(value: &str) -> Option<Result<Incoming, ReadError>> {
    Some(Ok(Incoming::Text(value.to_string())))
}

#[tokio::test]
async fn frames_arrive_whole_and_nothing_is_kept_between_them() {
    let (mut socket, mut client) = pair(&[]).await;
    let mut bytes = frame(TEXT, br#"{"type":"connection_init"}"#);
    bytes.extend(frame(TEXT, "pr\u{e9}t".as_bytes()));
    bytes.extend(frame(BINARY, &[0, 1, 2]));
    client.write_all(&bytes).await.unwrap();
    assert_eq!(next(&mut socket).await, text(r#"{"type":"connection_init"}"#));
    assert_eq!(next(&mut socket).await, text("pr\u{e9}t"));
    assert_eq!(next(&mut socket).await, Some(Ok(Incoming::Binary)));
    assert_eq!(socket.input.capacity(), 0, "an idle socket keeps no read buffer");
    drop(client);
    assert_eq!(next(&mut socket).await, None);
}

#[tokio::test]
async fn a_frame_read_in_pieces_is_assembled() {
    let whole = frame(TEXT, "x".repeat(300).as_bytes());
    let (first, rest) = whole.split_at(3);
    let (mut socket, mut client) = pair(first).await;
    let (middle, last) = rest.split_at(100);
    client.write_all(middle).await.unwrap();
    client.flush().await.unwrap();
    tokio::task::yield_now().await;
    client.write_all(last).await.unwrap();
    assert_eq!(next(&mut socket).await, text(&"x".repeat(300)));
    assert_eq!(socket.input.capacity(), 0);
}

#[tokio::test]
async fn fragments_are_joined_and_control_frames_may_come_between_them() {
    let (mut socket, mut client) = pair(&[]).await;
    let mut bytes = frame(TEXT_FIRST, b"Hel");
    bytes.extend(frame(PING, b"are you there"));
    bytes.extend(frame(CONTINUE, b"lo, "));
    bytes.extend(frame(CONTINUE_LAST, b"Bob"));
    client.write_all(&bytes).await.unwrap();
    assert_eq!(next(&mut socket).await, Some(Ok(Incoming::Ping(b"are you there".to_vec()))));
    assert_eq!(next(&mut socket).await, text("Hello, Bob"));
    assert_eq!(socket.fragments.capacity(), 0);
}

#[tokio::test]
async fn frames_that_break_the_protocol_are_refused() {
    let unmasked = vec![TEXT, 2, b'h', b'i'];
    let long_ping = frame(PING, &[0; 126]);
    let cases: Vec<(&str, Vec<u8>, ReadError)> = vec![
        ("unmasked", unmasked, ReadError::Protocol("Client frames must be masked")),
        ("reserved bit", frame(TEXT | 0x40, b"hi"), ReadError::Protocol("Reserved bits are set")),
        ("reserved opcode", frame(0x83, b"hi"), ReadError::Protocol("Reserved opcode")),
        (
            "continuation first",
            frame(CONTINUE_LAST, b"hi"),
            ReadError::Protocol("A continuation frame began a message"),
        ),
        (
            "message inside a message",
            [frame(TEXT_FIRST, b"a"), frame(TEXT, b"b")].concat(),
            ReadError::Protocol("A message began inside another"),
        ),
        ("long ping", long_ping, ReadError::Protocol("Control frames must be whole and short")),
        (
            "fragmented ping",
            frame(0x09, b"p"),
            ReadError::Protocol("Control frames must be whole and short"),
        ),
        ("not UTF-8", frame(TEXT, &[0xff, 0xfe]), ReadError::NotUtf8),
        ("one-byte close", frame(CLOSE, &[3]), ReadError::Protocol("A close code has two bytes")),
    ];
    for (case, bytes, error) in cases {
        let (mut socket, mut client) = pair(&[]).await;
        client.write_all(&bytes).await.unwrap();
        assert_eq!(next(&mut socket).await, Some(Err(error)), "{case}");
    }
}

#[tokio::test]
async fn oversized_frames_are_refused_from_their_header() {
    // Only the header is sent: the limit is enforced before any payload is read or reserved.
    let (mut socket, mut client) = pair(&[]).await;
    let header = &frame(TEXT, &vec![b'x'; LIMIT + 1])[..8];
    client.write_all(header).await.unwrap();
    assert_eq!(next(&mut socket).await, Some(Err(ReadError::TooBig)));
    assert!(socket.input.capacity() < 64);

    // Fragments that are each small but together too big.
    let (mut socket, mut client) = pair(&[]).await;
    let half = vec![b'x'; LIMIT / 2 + 1];
    client
        .write_all(&[frame(TEXT_FIRST, &half), frame(CONTINUE_LAST, &half)].concat())
        .await
        .unwrap();
    assert_eq!(next(&mut socket).await, Some(Err(ReadError::TooBig)));
}

#[tokio::test]
async fn a_connection_lost_mid_frame_is_broken_not_closed() {
    let (mut socket, mut client) = pair(&[]).await;
    client.write_all(&frame(TEXT, b"hello")[..4]).await.unwrap();
    drop(client);
    assert_eq!(next(&mut socket).await, Some(Err(ReadError::Broken)));
}

#[tokio::test]
async fn close_frames_carry_their_code() {
    let (mut socket, mut client) = pair(&[]).await;
    let mut payload = 4000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    client.write_all(&[frame(CLOSE, &payload), frame(CLOSE, &[])].concat()).await.unwrap();
    assert_eq!(next(&mut socket).await, Some(Ok(Incoming::Close(Some(4000)))));
    assert_eq!(next(&mut socket).await, Some(Ok(Incoming::Close(None))));
}

/// Server frames as a websocket client library reads them, at each length encoding.
#[tokio::test]
async fn a_client_library_reads_what_the_socket_writes() {
    let (mut socket, client) = pair(&[]).await;
    let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let texts = ["short".to_string(), "m".repeat(300), "l".repeat(70_000)];
    for text in &texts {
        socket.feed_text(text).await.unwrap();
    }
    socket.queue_pong(b"ping payload");
    assert!(socket.has_output());
    socket.flush().await.unwrap();
    assert!(!socket.has_output());
    assert_eq!(socket.output.capacity(), 0, "an idle socket keeps no write buffer");
    for text in &texts {
        assert_eq!(client.next().await.unwrap().unwrap(), Message::text(text.as_str()));
    }
    assert_eq!(client.next().await.unwrap().unwrap(), Message::Pong(b"ping payload"[..].into()));

    // The client's ping and text, through its own masking.
    client.send(Message::Ping(b"hi"[..].into())).await.unwrap();
    client.send(Message::text("from the client")).await.unwrap();
    assert_eq!(next(&mut socket).await, Some(Ok(Incoming::Ping(b"hi".to_vec()))));
    assert_eq!(next(&mut socket).await, text("from the client"));
}

#[tokio::test]
async fn closing_sends_the_code_and_waits_for_the_client_to_answer() {
    let (mut socket, client) = pair(&[]).await;
    let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let reading = tokio::spawn(async move {
        // tungstenite answers the Close itself and then reports the connection closed.
        let received = client.next().await;
        while client.next().await.is_some() {}
        received
    });
    socket.close(4401, "Session ended").await;
    let frame = CloseFrame { code: CloseCode::from(4401), reason: "Session ended".into() };
    assert_eq!(reading.await.unwrap().unwrap().unwrap(), Message::Close(Some(frame)));
}

#[tokio::test]
async fn a_client_close_is_echoed_unless_its_code_is_reserved() {
    for (sent, answered) in [(1000, 1000), (4000, 4000), (1005, close::PROTOCOL_ERROR)] {
        let (mut socket, client) = pair(&[]).await;
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let mut payload = u16::to_be_bytes(sent).to_vec();
        payload.extend_from_slice(b"bye");
        // Raw, since tungstenite refuses to send a reserved code.
        client.get_mut().write_all(&frame(CLOSE, &payload)).await.unwrap();
        assert_eq!(next(&mut socket).await, Some(Ok(Incoming::Close(Some(sent)))));
        socket.answer_close(Some(sent)).await;
        match client.next().await.unwrap().unwrap() {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), answered, "{sent}"),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}
