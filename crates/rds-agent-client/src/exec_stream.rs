//! A streamed exec: the agent's NDJSON events, proxied raw or decoded one by one.

use http_body_util::BodyExt;
use hyper::body::Incoming;
use rds_proto::ExecEvent;

use crate::AgentError;

/// Longest event line accepted (the agent's output chunks are far smaller).
const MAX_EVENT_LINE: usize = 16 << 20;

/// The response of a streamed exec, not read yet.
pub struct ExecStream {
    body: Incoming,
}

impl ExecStream {
    pub(crate) fn new(body: Incoming) -> ExecStream {
        ExecStream { body }
    }

    /// The raw NDJSON body, to forward as it comes.
    pub fn into_body(self) -> Incoming {
        self.body
    }

    /// The events, decoded one line at a time.
    pub fn events(self) -> ExecEvents {
        ExecEvents { body: self.body, buf: Vec::new(), scanned: 0, ended: false }
    }
}

/// Decodes a streamed exec's events.
pub struct ExecEvents {
    body: Incoming,
    buf: Vec<u8>,
    /// Bytes of `buf` known to hold no newline.
    scanned: usize,
    ended: bool,
}

impl ExecEvents {
    /// The next event; `None` once the stream ended after a whole line.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>, AgentError> {
        loop {
            if let Some(at) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=self.scanned + at).collect();
                self.scanned = 0;
                let line = &line[..line.len() - 1];
                if line.is_empty() {
                    continue;
                }
                return serde_json::from_slice(line).map(Some).map_err(|e| AgentError::BadResponse(e.into()));
            }
            self.scanned = self.buf.len();
            if self.ended {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(AgentError::BadResponse("the event stream ended inside a line".into())),
                };
            }
            if self.buf.len() > MAX_EVENT_LINE {
                return Err(AgentError::BadResponse(format!("an event line exceeds {MAX_EVENT_LINE} bytes").into()));
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(Err(e)) => return Err(AgentError::Transport(e.into())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}
