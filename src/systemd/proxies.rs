//! zbus proxies for the parts of `org.freedesktop.systemd1` this tool calls, as systemd 252
//! serves them (see dbus/ for the introspection XML; a test checks the signatures against
//! a live systemd). Properties are read with explicit `Properties.GetAll` calls, never
//! from a cache: limits change under us.

use zbus::proxy;
use zbus::zvariant::{OwnedObjectPath, Value};

pub const SERVICE: &str = "org.freedesktop.systemd1";
pub const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
pub const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
pub const SLICE_INTERFACE: &str = "org.freedesktop.systemd1.Slice";
pub const SCOPE_INTERFACE: &str = "org.freedesktop.systemd1.Scope";

/// One row of `ListUnitsByPatterns`.
pub type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_blocking = false
)]
pub trait Manager {
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[(&str, Value<'_>)],
    ) -> zbus::Result<()>;

    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, Vec<(&str, Value<'_>)>)],
    ) -> zbus::Result<OwnedObjectPath>;

    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn ref_unit(&self, name: &str) -> zbus::Result<()>;

    fn unref_unit(&self, name: &str) -> zbus::Result<()>;

    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<Vec<UnitRow>>;

    fn reload(&self) -> zbus::Result<()>;

    /// Every process in the unit's cgroup and below it: (cgroup path, PID, command line).
    fn get_unit_processes(&self, name: &str) -> zbus::Result<Vec<(String, u32, String)>>;

    #[zbus(property(emits_changed_signal = "false"))]
    fn system_state(&self) -> zbus::Result<String>;

    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> zbus::Result<String>;

    #[zbus(
        property(emits_changed_signal = "const"),
        name = "DefaultCPUAccounting"
    )]
    fn default_cpu_accounting(&self) -> zbus::Result<bool>;

    #[zbus(property(emits_changed_signal = "const"))]
    fn default_memory_accounting(&self) -> zbus::Result<bool>;

    #[zbus(property(emits_changed_signal = "const"))]
    fn default_tasks_accounting(&self) -> zbus::Result<bool>;
}

/// systemd's object path for a unit name (`bus_label_escape`): every byte outside
/// `[A-Za-z0-9]`, and a leading digit, becomes `_xx` in lower-case hex.
pub fn unit_object_path(unit: &str) -> String {
    let mut path = String::from("/org/freedesktop/systemd1/unit/");
    if unit.is_empty() {
        path.push('_');
        return path;
    }
    for (i, b) in unit.bytes().enumerate() {
        let plain = b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit());
        if plain {
            path.push(b as char);
        } else {
            path.push_str(&format!("_{b:02x}"));
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_match_systemd() {
        assert_eq!(
            unit_object_path("ds01-student-alice.slice"),
            "/org/freedesktop/systemd1/unit/ds01_2dstudent_2dalice_2eslice"
        );
        assert_eq!(
            unit_object_path("ds01.slice"),
            "/org/freedesktop/systemd1/unit/ds01_2eslice"
        );
        assert_eq!(
            unit_object_path("1a:b"),
            "/org/freedesktop/systemd1/unit/_31a_3ab"
        );
    }
}
