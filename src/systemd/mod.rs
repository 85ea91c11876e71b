//! The D-Bus side: proxies generated from systemd's interfaces (`dbus/`), the client trait,
//! the one connection that implements it, and the bounded pipelining (calls in flight,
//! holders, pins) that keeps a busy systemd on its bus.

mod bus;
pub mod client;
mod convert;
mod ended;
mod error;
pub mod pipeline;
pub mod proxies;
pub mod stats;

pub use bus::{AccountingDefaults, BusSystemd, SYSTEM_BUS_ADDRESS};
pub use client::{Systemd, WriteMode};
pub use error::BusError;
pub use pipeline::HOLDER_PREFIX;
pub use stats::BusStatsSnapshot;

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::str::FromStr;

    use zbus::address::{Address, Transport};

    use crate::model::fleet::{remote_bus_address, Host};

    fn unixexec(address: &str) -> (String, Vec<OsString>) {
        match Address::from_str(address).unwrap().transport() {
            Transport::Unixexec(u) => (u.path().display().to_string(), u.args().to_vec()),
            other => panic!("{address}: not unixexec: {other:?}"),
        }
    }

    #[test]
    fn zbus_runs_the_remote_address_as_systemctl_h_runs_ssh() {
        let host = Host::parse("root@gpu01.example.org").unwrap();
        let address = remote_bus_address("/usr/local/bin/my-ssh", &host, 30).unwrap();
        let (path, args) = unixexec(&address);
        assert_eq!(path, "/usr/local/bin/my-ssh");
        let want = [
            "-xT",
            "-oBatchMode=yes",
            "-oConnectTimeout=30",
            "--",
            "root@gpu01.example.org",
            "systemd-stdio-bridge",
        ];
        assert_eq!(args, want.map(OsString::from));
    }

    /// Why the address is not percent-escaped: zbus 5.19 does not decode unixexec values,
    /// so `%40` would reach ssh as those three characters. Should zbus start decoding, this
    /// fails, and `remote_bus_address` can escape as the D-Bus specification says.
    #[test]
    fn zbus_passes_unixexec_values_undecoded() {
        let (path, args) = unixexec("unixexec:path=ss%68,argv1=a%40b");
        assert_eq!(path, "ss%68");
        assert_eq!(args, [OsString::from("a%40b")]);
    }
}
