//! The websocket frame layer (RFC 6455) on the connection's own TCP stream.
//!
//! Ours rather than tungstenite's through axum because a chat connection spends its life idle,
//! and what an idle connection keeps is what #17 measures: tungstenite keeps a read buffer the
//! size of the largest frame it has read (~0.8 KiB per connection after `connection_init` and
//! `subscribe`) and a write buffer, tokio-tungstenite two waker proxies, hyper a boxed upgraded
//! stream. Here an idle socket is its `TcpStream` and a few words: bytes are read onto the stack
//! and copied out only while a frame is incomplete, and outgoing frames are kept only until they
//! are written. tungstenite still parses frame headers and derives the handshake's accept key.
//!
//! What it enforces, as RFC 6455 asks of a server: client frames are masked, reserved bits are
//! clear (no extension is negotiated), control frames are whole and at most 125 bytes, a
//! fragmented message is not interrupted by another, text is UTF-8, and no frame or message is
//! larger than the configured limit (refused from its header, before its payload is read).

use std::{
    io::{self, Cursor},
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tungstenite::{
    error::ProtocolError,
    protocol::frame::{
        FrameHeader,
        coding::{Control, Data, OpCode},
    },
};

use super::protocol::close;

/// Most bytes read from the socket at once (onto the stack, so nothing is kept while idle).
const READ_CHUNK: usize = 4096;
/// Outgoing bytes queued before they are written while a burst is still being queued. The
/// queue is freed once written, so this costs nothing while idle.
const WRITE_CHUNK: usize = 16 * 1024;
/// Largest payload of a control frame (RFC 6455 section 5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    /// Binary messages are read whole (within the limit) and refused by the caller.
    Binary,
    /// Answered with a pong carrying the same payload ([`Socket::queue_pong`]).
    Ping(Vec<u8>),
    Pong,
    /// The client is closing, with its close code if it gave one.
    Close(Option<u16>),
}

/// Why a client's frames cannot be read on.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// A frame or message over the size limit (close code 1009).
    TooBig,
    /// A frame that breaks RFC 6455 (close code 1002); says which rule.
    Protocol(&'static str),
    /// A text message or close reason that is not UTF-8 (close code 1007).
    NotUtf8,
    /// The connection failed or ended in the middle of a frame.
    Broken,
}

/// One websocket connection, server side.
pub struct Socket {
    io: TcpStream,
    /// Bytes read but not yet taken as frames: empty, without an allocation, between frames.
    input: Vec<u8>,
    /// The frames so far of a fragmented message: empty unless one is arriving.
    fragments: Vec<u8>,
    /// Whether a fragmented message is arriving, and whether it is text.
    fragmented: Option<bool>,
    /// Frames queued for the client: empty, without an allocation, once written.
    output: Vec<u8>,
    /// How much of `output` is written.
    written: usize,
    /// Largest frame and message accepted (`WS_MAX_MESSAGE_BYTES`).
    max_message_bytes: usize,
}

impl Socket {
    /// Wraps an upgraded connection; `read_ahead` is what the HTTP layer read past the upgrade
    /// request (a client may send its first frames without waiting for the answer).
    pub fn new(io: TcpStream, read_ahead: &[u8], max_message_bytes: usize) -> Self {
        Socket {
            io,
            input: read_ahead.to_vec(),
            fragments: Vec::new(),
            fragmented: None,
            output: Vec::new(),
            written: 0,
            max_message_bytes,
        }
    }

    /// The next message; `None` once the client has closed the connection between frames.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Incoming, ReadError>>> {
        loop {
            match self.parse() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(error) => return Poll::Ready(Some(Err(error))),
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            if ready!(Pin::new(&mut self.io).poll_read(cx, &mut read)).is_err() {
                return Poll::Ready(Some(Err(ReadError::Broken)));
            }
            if read.filled().is_empty() {
                let between_frames = self.input.is_empty() && self.fragmented.is_none();
                return Poll::Ready((!between_frames).then_some(Err(ReadError::Broken)));
            }
            self.input.extend_from_slice(read.filled());
        }
    }

    /// Takes the next whole message from `input`, if it holds one.
    fn parse(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let mut cursor = Cursor::new(self.input.as_slice());
            let Some((header, length)) = FrameHeader::parse(&mut cursor).map_err(header_error)?
            else {
                return Ok(None);
            };
            let start = cursor.position() as usize;
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(ReadError::Protocol("Reserved bits are set"));
            }
            let Some(mask) = header.mask else {
                return Err(ReadError::Protocol("Client frames must be masked"));
            };
            let control = matches!(header.opcode, OpCode::Control(_));
            if control && (!header.is_final || length > MAX_CONTROL_PAYLOAD) {
                return Err(ReadError::Protocol("Control frames must be whole and short"));
            }
            let limit = self.max_message_bytes as u64;
            if length > limit || (!control && self.fragments.len() as u64 + length > limit) {
                return Err(ReadError::TooBig);
            }
            let end = start + length as usize;
            if self.input.len() < end {
                // Room for the rest of this frame only (at most the limit): no more is kept.
                self.input.reserve_exact(end - self.input.len());
                return Ok(None);
            }
            let mut payload = self.take(start, end);
            unmask(&mut payload, mask);
            let message = match header.opcode {
                OpCode::Data(Data::Text | Data::Binary) if self.fragmented.is_some() => {
                    return Err(ReadError::Protocol("A message began inside another"));
                }
                OpCode::Data(data @ (Data::Text | Data::Binary)) if !header.is_final => {
                    self.fragments = payload;
                    self.fragmented = Some(data == Data::Text);
                    continue;
                }
                OpCode::Data(Data::Text) => text(payload)?,
                OpCode::Data(Data::Binary) => Incoming::Binary,
                OpCode::Data(Data::Continue) => {
                    let Some(is_text) = self.fragmented else {
                        return Err(ReadError::Protocol("A continuation frame began a message"));
                    };
                    self.fragments.extend_from_slice(&payload);
                    if !header.is_final {
                        continue;
                    }
                    self.fragmented = None;
                    let whole = std::mem::take(&mut self.fragments);
                    if is_text { text(whole)? } else { Incoming::Binary }
                }
                OpCode::Control(Control::Close) => close(&payload)?,
                OpCode::Control(Control::Ping) => Incoming::Ping(payload),
                OpCode::Control(Control::Pong) => Incoming::Pong,
                OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                    return Err(ReadError::Protocol("Reserved opcode"));
                }
            };
            return Ok(Some(message));
        }
    }

    /// Removes a frame (header up to `end`) from `input` and returns its payload (from
    /// `start`). When the frame is all there is, the buffer itself becomes the payload.
    fn take(&mut self, start: usize, end: usize) -> Vec<u8> {
        if end == self.input.len() {
            let mut payload = std::mem::take(&mut self.input);
            payload.drain(..start);
            payload
        } else {
            let payload = self.input[start..end].to_vec();
            self.input.drain(..end);
            payload
        }
    }

    /// Queues a text message.
    pub fn queue_text(&mut self, text: &str) {
        self.queue(OpCode::Data(Data::Text), text.as_bytes());
    }

    /// Queues the answer to a ping.
    pub fn queue_pong(&mut self, payload: &[u8]) {
        self.queue(OpCode::Control(Control::Pong), payload);
    }

    /// Whether anything is queued and not yet written.
    pub fn has_output(&self) -> bool {
        self.written < self.output.len()
    }

    fn queue(&mut self, opcode: OpCode, payload: &[u8]) {
        let header = FrameHeader { opcode, ..FrameHeader::default() };
        let length = payload.len() as u64;
        self.output.reserve(header.len(length) + payload.len());
        // Formatting into a `Vec` cannot fail.
        let _ = header.format(length, &mut self.output);
        self.output.extend_from_slice(payload);
    }

    /// Queues a text message, first writing what is queued if that is already a chunk.
    pub async fn feed_text(&mut self, text: &str) -> io::Result<()> {
        if self.output.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        self.queue_text(text);
        Ok(())
    }

    /// Writes everything queued, then frees the queue.
    pub async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.output.len() {
            let remaining = &self.output[self.written..];
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, remaining))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += written;
        }
        self.output = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Starts the closing handshake: sends a Close frame with `code` and `reason` after what is
    /// queued, then waits for the client's Close (or for it to hang up) so that the client
    /// reads ours before the connection is reset. The caller bounds how long this may take.
    pub async fn close(&mut self, code: u16, reason: &str) {
        self.queue_close(Some(code), reason);
        if self.flush().await.is_err() || self.io.shutdown().await.is_err() {
            return;
        }
        while let Some(Ok(message)) = std::future::poll_fn(|cx| self.poll_next(cx)).await {
            if let Incoming::Close(_) = message {
                break;
            }
        }
    }

    /// Answers the client's Close frame (echoing its code, as RFC 6455 section 5.5.1 suggests);
    /// the server then closes the connection first.
    pub async fn answer_close(&mut self, code: Option<u16>) {
        let code = code.map(|code| if may_echo(code) { code } else { close::PROTOCOL_ERROR });
        self.queue_close(code, "");
        let _ = self.flush().await;
    }

    fn queue_close(&mut self, code: Option<u16>, reason: &str) {
        let mut payload = Vec::with_capacity(2 + reason.len());
        if let Some(code) = code {
            payload.extend_from_slice(&code.to_be_bytes());
            // A control frame's payload is at most 125 bytes.
            let mut end = reason.len().min(MAX_CONTROL_PAYLOAD as usize - 2);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            payload.extend_from_slice(&reason.as_bytes()[..end]);
        }
        self.queue(OpCode::Control(Control::Close), &payload);
    }
}

/// Whether `code` may be sent in a Close frame (RFC 6455 section 7.4): 1004-1006 and 1015 are
/// reserved for reporting, and 1016-2999 are unassigned.
fn may_echo(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn header_error(error: tungstenite::Error) -> ReadError {
    match error {
        tungstenite::Error::Protocol(ProtocolError::InvalidOpcode(_)) => {
            ReadError::Protocol("Reserved opcode")
        }
        _ => ReadError::Protocol("Invalid frame header"),
    }
}

fn text(payload: Vec<u8>) -> Result<Incoming, ReadError> {
    String::from_utf8(payload).map(Incoming::Text).map_err(|_| ReadError::NotUtf8)
}

/// Reads a Close frame's payload: nothing, or a code and a UTF-8 reason.
fn close(payload: &[u8]) -> Result<Incoming, ReadError> {
    match payload {
        [] => Ok(Incoming::Close(None)),
        [_] => Err(ReadError::Protocol("A close code has two bytes")),
        [high, low, reason @ ..] => {
            std::str::from_utf8(reason).map_err(|_| ReadError::NotUtf8)?;
            Ok(Incoming::Close(Some(u16::from_be_bytes([*high, *low]))))
        }
    }
}

/// Removes a client frame's mask (RFC 6455 section 5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (index, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[index % 4];
    }
}

#[cfg(test)]
mod tests;
