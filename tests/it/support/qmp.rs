//! QEMU's machine protocol (QMP) on a VM's monitor socket: one command per connection.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The monitor socket of the VM in `workdir` (QEMU's `-qmp`; vm-supervisor.sh quits QEMU on
/// it too).
pub fn socket(workdir: &Path) -> PathBuf {
    workdir.join("qmp.sock")
}

/// Sends `command` (a QMP command object, one line of JSON) and returns QEMU's answer (the
/// `"return"` line); Err for an `"error"` answer, or when the monitor cannot be reached or
/// does not answer within 30 s.
pub fn execute(monitor: &Path, command: &str) -> Result<String, String> {
    let fail = |e: std::io::Error| format!("QEMU's monitor {}: {e}", monitor.display());
    let stream = UnixStream::connect(monitor).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(fail)?;
    let mut writer = stream.try_clone().map_err(fail)?;
    let mut reader = BufReader::new(stream);
    let mut greeting = String::new();
    reader.read_line(&mut greeting).map_err(fail)?;
    let mut ask = |sent: &str| -> Result<String, String> {
        writer
            .write_all(format!("{sent}\n").as_bytes())
            .map_err(fail)?;
        // Events (RESET among them) may come before the answer.
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_err(fail)? == 0 {
                return Err(format!("QEMU's monitor {} closed", monitor.display()));
            }
            if line.contains("\"return\"") {
                return Ok(line);
            }
            if line.contains("\"error\"") {
                return Err(format!("QEMU's monitor answered {sent} with {line}"));
            }
        }
    };
    ask(r#"{"execute":"qmp_capabilities"}"#)?;
    ask(command)
}

/// The port on this machine where QEMU's user-mode network forwards TCP to `guest_port`, from
/// `info usernet` (a forward asked for host port 0 binds whatever port is free).
pub fn forwarded_port(monitor: &Path, guest_port: u16) -> Result<u16, String> {
    let answer = execute(
        monitor,
        r#"{"execute":"human-monitor-command","arguments":{"command-line":"info usernet"}}"#,
    )?;
    // "TCP[HOST_FORWARD]  FD  SRC_ADDR SRC_PORT  DEST_ADDR DEST_PORT ...", lines escaped in JSON.
    answer
        .split("\\r\\n")
        .filter(|line| line.contains("HOST_FORWARD"))
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let dest: u16 = fields.get(5)?.parse().ok()?;
            (dest == guest_port).then(|| fields.get(3)?.parse().ok())?
        })
        .ok_or_else(|| format!("no forward to guest port {guest_port} in {answer}"))
}
