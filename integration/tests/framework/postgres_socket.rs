//! The connections to PostgreSQL send each message at once: every TCP socket the pool opens
//! has `TCP_NODELAY`. Without it (sqlx-core 0.9.0, see vendor/README.md), a message written
//! in two parts (a statement larger than a TLS record or a TCP segment: jetflow's multi-row
//! batch statements) waits about 40 ms for the server's delayed ACK.
//!
//! Linux only (it reads /proc/self/fd), like the rest of the test suite's machines.

use std::str::FromStr;

use jetflow_integration::TestDatabase;
use jetflow_runtime::{Database, DbConfig};
use sqlx::postgres::PgConnectOptions;

/// The peer port of socket `fd`, if it is a connected TCP/IP socket.
fn peer_port(fd: libc::c_int) -> Option<u16> {
    // SAFETY: getpeername writes at most `len` bytes into `addr`, a zeroed sockaddr_storage
    // large enough for any address family; a non-socket fd makes it fail (ENOTSOCK).
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let rc = unsafe {
        libc::getpeername(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr>(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: the family says which sockaddr the storage holds.
    match libc::c_int::from(addr.ss_family) {
        libc::AF_INET => {
            let a =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(u16::from_be(a.sin_port))
        }
        libc::AF_INET6 => {
            let a =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(u16::from_be(a.sin6_port))
        }
        _ => None,
    }
}

/// Whether TCP socket `fd` has `TCP_NODELAY`.
fn no_delay(fd: libc::c_int) -> bool {
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `on`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&mut on as *mut libc::c_int).cast::<libc::c_void>(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt(TCP_NODELAY) on fd {fd}");
    on != 0
}

/// This process's TCP sockets connected to `port`: (fd, has TCP_NODELAY).
fn sockets_to(port: u16) -> Vec<(libc::c_int, bool)> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::c_int>().ok())
        .filter(|fd| peer_port(*fd) == Some(port))
        .map(|fd| (fd, no_delay(fd)))
        .collect()
}

#[test]
fn every_connection_to_postgresql_sends_without_delay() {
    jetflow_integration::run(async {
        let pg = TestDatabase::create().await;
        let port = PgConnectOptions::from_str(pg.url())
            .expect("a PostgreSQL URL")
            .get_port();
        let config = DbConfig {
            max_connections: Some(4),
            ..DbConfig::new(pg.url())
        };
        let db = Database::connect(&config).await.expect("PostgreSQL");
        // Hold four connections at once, so that the pool opened four sockets.
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(db.acquire().await.expect("a connection"));
        }
        let sockets = sockets_to(port);
        assert!(
            sockets.len() >= 4,
            "{} TCP sockets to port {port} for 4 connections held",
            sockets.len()
        );
        let delayed: Vec<libc::c_int> = sockets
            .iter()
            .filter(|(_, on)| !on)
            .map(|(fd, _)| *fd)
            .collect();
        assert!(
            delayed.is_empty(),
            "sockets to PostgreSQL without TCP_NODELAY (fds {delayed:?}): each statement larger \
             than one TLS record or TCP segment would wait for a delayed ACK"
        );
        drop(held);
        db.close().await;
    })
}
