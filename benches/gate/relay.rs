//! A bare relay between the client and the daemon, for the native benchmark's third path:
//! what any process in the gate's place costs on this machine, against which the gate's own
//! cost shows.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// The argument that makes this benchmark's binary the bare relay: `--relay LISTEN DAEMON`.
pub const RELAY_FLAG: &str = "--relay";

/// Bytes from one socket to the other, a thread per direction, 64 KiB at a time, nothing
/// parsed or decided. Runs until killed (its parent's death kills it: setpriv's
/// `--pdeathsig`).
pub fn relay(listen: &Path, daemon: &Path) -> ! {
    // Root's only until the benchmark gives it the daemon socket's group (native.rs).
    let listener = UnixListener::bind(listen).unwrap();
    for client in listener.incoming().flatten() {
        let Ok(upstream) = UnixStream::connect(daemon) else {
            continue;
        };
        let (Ok(client_too), Ok(upstream_too)) = (client.try_clone(), upstream.try_clone()) else {
            continue;
        };
        std::thread::spawn(move || one_way(client_too, upstream_too));
        std::thread::spawn(move || one_way(upstream, client));
    }
    unreachable!("a listener's incoming() never ends")
}

/// Bytes from `from` to `to` until `from` ends its side, which then ends `to`'s.
fn one_way(mut from: UnixStream, mut to: UnixStream) {
    let mut buf = vec![0; 64 << 10];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
