//! A Hugging Face hub on the loopback interface, for download tests: the repository listing
//! (`/api/models/{repo}/revision/{rev}`) and the resolve URLs
//! (`/{repo}/resolve/{rev}/{file}`), answered with the headers hf-hub reads (`ETag`,
//! `X-Repo-Commit`, `Content-Range` for its ranged GETs) and the hub's error headers. Every
//! request is recorded, so tests can say what was and was not fetched.
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct ServedRepo {
    pub id: String,
    pub commit: String,
    pub files: Vec<(String, Vec<u8>)>,
    /// Answers 401 unless the request carries `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl ServedRepo {
    pub fn new(id: &str, files: Vec<(String, Vec<u8>)>) -> ServedRepo {
        ServedRepo { id: id.into(), commit: "c0ffee0123456789abcdef0123456789abcdef01".into(), files, token: None }
    }

    /// Every file of the folder `dir` (not its subfolders).
    pub fn from_dir(id: &str, dir: &std::path::Path) -> ServedRepo {
        let mut files = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                files.push((p.file_name().unwrap().to_str().unwrap().to_string(), std::fs::read(&p).unwrap()));
            }
        }
        files.sort();
        ServedRepo::new(id, files)
    }
}

/// A request as the server saw it: `GET /path`, with its `Range` and whether it had a token.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

pub struct HubServer {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// File names answered with HTTP 500 while they are listed here.
    pub failing: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HubServer {
    pub fn start(repos: Vec<ServedRepo>) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, f) = (seen.clone(), stop.clone(), failing.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                if let Some(req) = read_request(&conn) {
                    s.lock().unwrap().push(req.clone());
                    let broken = f.lock().unwrap().iter().any(|name| req.path.ends_with(&format!("/{name}")));
                    let _ = if broken {
                        error(&conn, "500 Internal Server Error", "Internal", "try again")
                    } else {
                        respond(&conn, &req, &repos)
                    };
                }
            }
        });
        HubServer { url, seen, failing, stop, thread: Some(thread) }
    }

    /// The paths requested so far.
    pub fn paths(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|s| s.path.clone()).collect()
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_request(conn: &TcpStream) -> Option<Seen> {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?, parts.next()?.to_string());
    assert_eq!(method, "GET", "hf-hub only GETs");
    let (mut range, mut authorization) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(value.trim().to_string()),
                "authorization" => authorization = Some(value.trim().to_string()),
                _ => {}
            }
        }
    }
    Some(Seen { path, range, authorization })
}

fn send(mut conn: &TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}

fn error(conn: &TcpStream, status: &str, code: &str, message: &str) -> std::io::Result<()> {
    let body = format!("{{\"error\": \"{message}\"}}");
    let headers = [("X-Error-Code", code.to_string()), ("X-Error-Message", message.to_string())];
    send(conn, status, &headers, body.as_bytes())
}

fn respond(conn: &TcpStream, req: &Seen, repos: &[ServedRepo]) -> std::io::Result<()> {
    let find = |id: &str| repos.iter().find(|r| r.id == id);
    let authorized = |r: &ServedRepo| r.token.as_ref().is_none_or(|t| req.authorization == Some(format!("Bearer {t}")));
    let revision_ok = |r: &ServedRepo, rev: &str| rev == "main" || rev == r.commit;
    if let Some(rest) = req.path.strip_prefix("/api/models/") {
        let Some((id, rev)) = rest.split_once("/revision/") else {
            return error(conn, "404 Not Found", "RepoNotFound", "Repository not found");
        };
        let Some(repo) = find(id).filter(|r| authorized(r)) else {
            // As the hub does: a private or gated repository looks like a missing one.
            return error(conn, "401 Unauthorized", "RepoNotFound", "Repository not found");
        };
        if !revision_ok(repo, rev) {
            return error(conn, "404 Not Found", "RevisionNotFound", "Invalid rev id");
        }
        let siblings: Vec<_> = repo.files.iter().map(|(n, _)| serde_json::json!({ "rfilename": n })).collect();
        let body = serde_json::json!({ "id": repo.id, "sha": repo.commit, "siblings": siblings }).to_string();
        return send(conn, "200 OK", &[("Content-Type", "application/json".into())], body.as_bytes());
    }
    let path = req.path.trim_start_matches('/');
    let mut parts = path.splitn(5, '/');
    let (Some(org), Some(name), Some("resolve"), Some(rev), Some(file)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return error(conn, "404 Not Found", "EntryNotFound", "not a hub URL");
    };
    let Some(repo) = find(&format!("{org}/{name}")) else {
        return error(conn, "401 Unauthorized", "RepoNotFound", "Repository not found");
    };
    if !authorized(repo) {
        return error(conn, "401 Unauthorized", "GatedRepo", "Access to model is restricted");
    }
    if !revision_ok(repo, rev) {
        return error(conn, "404 Not Found", "RevisionNotFound", "Invalid rev id");
    }
    let Some((_, data)) = repo.files.iter().find(|(n, _)| n == file) else {
        return error(conn, "404 Not Found", "EntryNotFound", "Entry not found");
    };
    let size = data.len();
    let (start, end) = match req.range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap();
            let a: usize = a.parse().unwrap();
            let b: usize =
                if b.is_empty() { size.saturating_sub(1) } else { b.parse::<usize>().unwrap().min(size - 1) };
            (a, b)
        }
        None => (0, size.saturating_sub(1)),
    };
    let mut h = DefaultHasher::new();
    data.hash(&mut h);
    let headers = [
        ("ETag", format!("\"{:016x}{size:08x}\"", h.finish())),
        ("X-Repo-Commit", repo.commit.clone()),
        ("Content-Range", format!("bytes {start}-{end}/{size}")),
        ("Accept-Ranges", "bytes".into()),
    ];
    let body = if size == 0 { &data[..0] } else { &data[start..=end] };
    send(conn, "206 Partial Content", &headers, body)
}
