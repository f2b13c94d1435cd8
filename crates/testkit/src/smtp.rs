//! A real SMTP server in-process, for tests that send mail: it listens on a
//! free loopback port, speaks SMTP (mailin-embedded), records each message
//! it accepts, and answers 4xx or 5xx on demand ([`SmtpServer::fail_next`]).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! let smtp = keel_testkit::smtp::SmtpServer::start()?;
//! // ... point KEEL_SMTP_URL at smtp.url() and send ...
//! let mails = smtp.wait_for(1, Duration::from_secs(5)).await;
//! assert_eq!(mails[0].header("Subject").as_deref(), Some("Welcome to Keel"));
//! # Ok(()) }
//! ```
//!
//! Also [`SilentServer`]: one that takes connections and never says a
//! word, for timeouts.

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr, TcpListener},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::Context as _;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use mailin_embedded::{Handler, Response, Server, response};

/// How the server refuses a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpFault {
    /// `451 4.3.0 Try again later`: a transient failure.
    Transient,
    /// `550 5.1.1 Mailbox unavailable`: a permanent failure.
    Permanent,
}

impl SmtpFault {
    /// The reply code it answers with.
    pub const fn code(self) -> u16 {
        match self {
            SmtpFault::Transient => 451,
            SmtpFault::Permanent => 550,
        }
    }

    fn response(self) -> Response {
        let text = match self {
            SmtpFault::Transient => "4.3.0 Try again later",
            SmtpFault::Permanent => "5.1.1 Mailbox unavailable",
        };
        Response::custom(self.code(), text.to_owned())
    }
}

/// Where in the conversation a fault answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpStage {
    /// At `RCPT TO`, before any content is sent.
    Rcpt,
    /// At `DATA`, once the recipient was accepted. (Not after the content:
    /// mailin stays in its data state after refusing there, and would take
    /// the client's next commands for content.)
    Data,
}

/// A message the server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The envelope sender (`MAIL FROM`).
    pub from: String,
    /// The envelope recipients (`RCPT TO`).
    pub to: Vec<String>,
    /// The raw message, headers and body, as the client sent it.
    pub data: String,
}

impl ReceivedMail {
    /// The first header called `name` (any case), unfolded; as sent, so an
    /// RFC 2047 encoded word stays encoded.
    pub fn header(&self, name: &str) -> Option<String> {
        Part::parse(&self.data).header(name)
    }

    /// The first `text/plain` part, decoded (quoted-printable, base64),
    /// with `\n` line ends.
    pub fn text_body(&self) -> Option<String> {
        Part::parse(&self.data).find("text/plain")
    }

    /// The first `text/html` part, decoded, with `\n` line ends.
    pub fn html_body(&self) -> Option<String> {
        Part::parse(&self.data).find("text/html")
    }
}

/// A running server. It lives until the test process ends (mailin's accept
/// loop has no stop); each one costs an idle thread.
#[derive(Debug, Clone)]
pub struct SmtpServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    received: Vec<ReceivedMail>,
    faults: VecDeque<(SmtpFault, SmtpStage)>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A test that panicked while holding the lock leaves data that is still
    // worth reading.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SmtpServer {
    /// Starts a server on a free port of 127.0.0.1.
    pub fn start() -> anyhow::Result<SmtpServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the SMTP server")?;
        let addr = listener.local_addr().context("the SMTP server's address")?;
        let state = Arc::new(Mutex::new(State::default()));
        let mut server = Server::new(Recorder {
            state: state.clone(),
            current: None,
        });
        server
            .with_name("smtp.keel-testkit.localhost")
            // One thread per open connection: room for pools of several
            // mailers at once.
            .with_num_threads(32)
            .with_tcp_listener(listener);
        // serve() blocks for good: it gets a thread of its own.
        std::thread::Builder::new()
            .name(format!("smtp-{}", addr.port()))
            .spawn(move || {
                if let Err(e) = server.serve() {
                    tracing::error!(error = %e, "the test SMTP server stopped");
                }
            })
            .context("starting the SMTP server's thread")?;
        Ok(SmtpServer { addr, state })
    }

    /// `smtp://127.0.0.1:PORT` (no TLS), for `KEEL_SMTP_URL`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every message accepted so far, oldest first.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        lock(&self.state).received.clone()
    }

    /// Waits until at least `count` messages were accepted, or `timeout`
    /// passed; returns all of them either way (check the count).
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= count || tokio::time::Instant::now() >= deadline {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Refuses the next `n` messages at `RCPT TO` with `reply`.
    pub fn fail_next(&self, n: usize, reply: SmtpFault) {
        self.fail_next_at(n, reply, SmtpStage::Rcpt);
    }

    /// Refuses the next `n` messages at `stage` with `reply`. Refused
    /// messages are not recorded.
    pub fn fail_next_at(&self, n: usize, reply: SmtpFault, stage: SmtpStage) {
        lock(&self.state).faults.extend(std::iter::repeat_n((reply, stage), n));
    }
}

/// One connection's handler (mailin clones it per connection).
#[derive(Debug, Clone)]
struct Recorder {
    state: Arc<Mutex<State>>,
    current: Option<InProgress>,
}

#[derive(Debug, Clone)]
struct InProgress {
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
    fault: Option<(SmtpFault, SmtpStage)>,
}

impl Recorder {
    fn fault_at(&self, stage: SmtpStage) -> Option<Response> {
        match self.current.as_ref()?.fault {
            Some((fault, at)) if at == stage => Some(fault.response()),
            _ => None,
        }
    }
}

impl Handler for Recorder {
    fn mail(&mut self, _ip: IpAddr, _domain: &str, from: &str) -> Response {
        // Each MAIL FROM starts a message, and the next scripted fault is
        // this message's.
        let fault = lock(&self.state).faults.pop_front();
        self.current = Some(InProgress {
            from: from.to_owned(),
            to: Vec::new(),
            data: Vec::new(),
            fault,
        });
        response::OK
    }

    fn rcpt(&mut self, to: &str) -> Response {
        if let Some(refusal) = self.fault_at(SmtpStage::Rcpt) {
            return refusal;
        }
        if let Some(current) = &mut self.current {
            current.to.push(to.to_owned());
        }
        response::OK
    }

    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, _to: &[String]) -> Response {
        if let Some(refusal) = self.fault_at(SmtpStage::Data) {
            self.current = None;
            return refusal;
        }
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some(current) = &mut self.current {
            current.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        if let Some(current) = self.current.take() {
            lock(&self.state).received.push(ReceivedMail {
                from: current.from,
                to: current.to,
                data: String::from_utf8_lossy(&current.data).into_owned(),
            });
        }
        response::OK
    }
}

/// A server that accepts connections and never answers, not even the
/// greeting: what a stalled relay looks like to a client.
#[derive(Debug)]
pub struct SilentServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SilentServer {
    /// Starts one on a free port of 127.0.0.1 (inside a Tokio runtime).
    pub async fn start() -> anyhow::Result<SilentServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the silent server")?;
        let addr = listener.local_addr().context("the silent server's address")?;
        let task = tokio::spawn(async move {
            // Held, never read or written, until the server is dropped.
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        Ok(SilentServer { addr, task })
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }
}

/// A MIME entity: its headers and its raw body, `\n` line ends.
struct Part {
    headers: Vec<(String, String)>,
    body: String,
}

impl Part {
    fn parse(raw: &str) -> Part {
        let raw = raw.replace("\r\n", "\n");
        let (head, body) = raw.split_once("\n\n").unwrap_or((raw.as_str(), ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                // A folded header continues the previous one.
                if let Some((_, value)) = headers.last_mut() {
                    if !value.is_empty() {
                        value.push(' ');
                    }
                    value.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
        Part {
            headers,
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    /// The content type, lower-cased, without parameters.
    fn content_type(&self) -> String {
        self.header("Content-Type")
            .unwrap_or_else(|| "text/plain".to_owned())
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    }

    /// The `boundary` parameter of a multipart content type.
    fn boundary(&self) -> Option<String> {
        let value = self.header("Content-Type")?;
        value.split(';').skip(1).find_map(|param| {
            let (key, value) = param.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| value.trim().trim_matches('"').to_owned())
        })
    }

    /// The decoded body of the first part of type `wanted`, depth first.
    fn find(&self, wanted: &str) -> Option<String> {
        let content_type = self.content_type();
        if content_type.starts_with("multipart/") {
            let delimiter = format!("--{}", self.boundary()?);
            return self
                .body
                .split(&delimiter)
                // Before the first delimiter is the preamble; a part that
                // starts with `--` is the end.
                .skip(1)
                .take_while(|chunk| !chunk.starts_with("--"))
                .find_map(|chunk| Part::parse(chunk.trim_start_matches('\n')).find(wanted));
        }
        (content_type == wanted).then(|| self.decoded())
    }

    fn decoded(&self) -> String {
        let encoding = self
            .header("Content-Transfer-Encoding")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let bytes = match encoding.as_str() {
            "quoted-printable" => quoted_printable::decode(self.body.as_bytes(), quoted_printable::ParseMode::Robust)
                .unwrap_or_else(|_| self.body.clone().into_bytes()),
            "base64" => {
                let compact: String = self.body.split_whitespace().collect();
                STANDARD
                    .decode(compact)
                    .unwrap_or_else(|_| self.body.clone().into_bytes())
            }
            _ => self.body.clone().into_bytes(),
        };
        let text = String::from_utf8_lossy(&bytes).replace("\r\n", "\n");
        // The line break before the next boundary belongs to the boundary.
        text.strip_suffix('\n').map(str::to_owned).unwrap_or(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = "From: Keel <no-reply@keel.localhost>\r\n\
        Subject: Hello\r\n\
        List-Unsubscribe: \r\n <https://keel.example/u/abc>\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: multipart/alternative;\r\n boundary=\"XYZ\"\r\n\
        \r\n\
        --XYZ\r\n\
        Content-Type: text/plain; charset=utf-8\r\n\
        Content-Transfer-Encoding: quoted-printable\r\n\
        \r\n\
        caf=C3=A9 is a long line that gets soft=\r\n broken\r\n\
        --XYZ\r\n\
        Content-Type: text/html; charset=utf-8\r\n\
        Content-Transfer-Encoding: base64\r\n\
        \r\n\
        PHA+aGk8L3A+\r\n\
        --XYZ--\r\n";

    fn mail() -> ReceivedMail {
        ReceivedMail {
            from: "no-reply@keel.localhost".into(),
            to: vec!["ada@example.com".into()],
            data: RAW.into(),
        }
    }

    #[test]
    fn headers_are_unfolded_and_case_blind() {
        let mail = mail();
        assert_eq!(mail.header("subject").as_deref(), Some("Hello"));
        assert_eq!(
            mail.header("List-Unsubscribe").as_deref(),
            Some("<https://keel.example/u/abc>")
        );
        assert_eq!(mail.header("X-Missing"), None);
    }

    #[test]
    fn parts_are_decoded() {
        let mail = mail();
        assert_eq!(
            mail.text_body().as_deref(),
            Some("café is a long line that gets soft broken")
        );
        assert_eq!(mail.html_body().as_deref(), Some("<p>hi</p>"));
    }
}
