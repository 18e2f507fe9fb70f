//! The backends' servers: HTTP that names the backend (`Bienvenue sur WEB2`),
//! a line echo that prefixes each line with the backend's name (for
//! long-lived connections), and a UDP echo that does the same.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

pub const HTTP_PORT: u16 = 80;
pub const ECHO_PORT: u16 = 9000;
pub const UDP_PORT: u16 = 5353;

/// The body a backend answers HTTP with.
pub fn greeting(name: &str) -> String {
    format!("Bienvenue sur {}\n", name.to_uppercase())
}

/// Serves all three protocols on `addr` until the process ends.
pub fn serve(name: &str, addr: &str) -> std::io::Result<()> {
    let http = TcpListener::bind((addr, HTTP_PORT))?;
    let echo = TcpListener::bind((addr, ECHO_PORT))?;
    let udp = UdpSocket::bind((addr, UDP_PORT))?;
    let body = greeting(name);
    let prefix = name.to_owned();
    thread::spawn(move || accept(&http, move |s| answer_http(s, &body)));
    thread::spawn(move || accept(&echo, move |s| echo_lines(s, &prefix)));
    let mut buf = [0_u8; 2048];
    loop {
        let (n, peer) = udp.recv_from(&mut buf)?;
        let mut reply = format!("{name} ").into_bytes();
        reply.extend_from_slice(&buf[..n]);
        let _ = udp.send_to(&reply, peer);
    }
}

fn accept(listener: &TcpListener, handler: impl Fn(TcpStream) + Clone + Send + 'static) {
    for stream in listener.incoming().flatten() {
        let handler = handler.clone();
        thread::spawn(move || handler(stream));
    }
}

fn answer_http(mut stream: TcpStream, body: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0_u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

fn echo_lines(stream: TcpStream, name: &str) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if writer
            .write_all(format!("{name} {line}\n").as_bytes())
            .is_err()
        {
            return;
        }
    }
}
