//! The D-Bus contract: every systemd member ds01-slices calls or reads, as a live systemd 252
//! serves it, against the signatures our proxies and reads use, and against the introspection
//! committed in dbus/. `DS01_BLESS_DBUS=1` rewrites dbus/*.xml from the live systemd.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use ds01_slices::model::names::SliceName;
use ds01_slices::model::property::{BusValue, Property};
use ds01_slices::systemd::proxies::{self, ManagerProxy, UnitRow};
use ds01_slices::systemd::{AccountingDefaults, BusSystemd, Systemd, WriteMode};
use zbus::zvariant::{OwnedObjectPath, Type, Value};

use crate::support::{sandbox_or_skip, Sandbox};

const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const SLICE: &str = "org.freedesktop.systemd1.Slice";
const SCOPE: &str = "org.freedesktop.systemd1.Scope";
const DBUS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dbus");
const MANAGER_XML: &str = "org.freedesktop.systemd1.Manager.xml";
const SLICE_XML: &str = "org.freedesktop.systemd1.Slice.xml";
const SCOPE_XML: &str = "org.freedesktop.systemd1.Scope.xml";
/// Any slice will do: every slice object serves the same interfaces.
const PROBE: &str = "ds01-contract.slice";
/// Any scope will do (a container's, named as Docker names them).
const SCOPE_PROBE: &str =
    "docker-0000000000000000000000000000000000000000000000000000000000c0ffee.scope";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Member {
    Method { inputs: String, outputs: String },
    Property { ty: String, access: String },
}

type Interfaces = BTreeMap<String, BTreeMap<String, Member>>;

fn sig<T: Type + ?Sized>() -> String {
    T::SIGNATURE.to_string()
}

fn method(inputs: &[&str], outputs: &[&str]) -> Member {
    Member::Method {
        inputs: inputs.concat(),
        outputs: outputs.concat(),
    }
}

fn read(ty: &str) -> Member {
    Member::Property {
        ty: ty.to_owned(),
        access: "read".to_owned(),
    }
}

/// What we use, by interface: methods with the argument types of src/systemd/proxies.rs
/// (taken from the same Rust types where the proxy has one), properties with the types that
/// src/systemd/client.rs decodes (`as_u64`: t, `as_bool`: b, `as_string`: s, `as_strings`: as).
fn used() -> Vec<(&'static str, &'static str, Member)> {
    let s = sig::<&str>();
    let o = sig::<OwnedObjectPath>();
    let props = sig::<[(&str, Value<'_>)]>();
    let aux = sig::<[(&str, Vec<(&str, Value<'_>)>)]>();
    let strings = sig::<[&str]>();
    let mut v = vec![
        (MANAGER, "LoadUnit", method(&[&s], &[&o])),
        (MANAGER, "GetUnit", method(&[&s], &[&o])),
        (
            MANAGER,
            "SetUnitProperties",
            method(&[&s, &sig::<bool>(), &props], &[]),
        ),
        (
            MANAGER,
            "StartTransientUnit",
            method(&[&s, &s, &props, &aux], &[&o]),
        ),
        (MANAGER, "StartUnit", method(&[&s, &s], &[&o])),
        (MANAGER, "StopUnit", method(&[&s, &s], &[&o])),
        (MANAGER, "RefUnit", method(&[&s], &[])),
        (MANAGER, "UnrefUnit", method(&[&s], &[])),
        (
            MANAGER,
            "ListUnitsByPatterns",
            method(&[&strings, &strings], &[&sig::<Vec<UnitRow>>()]),
        ),
        (MANAGER, "Reload", method(&[], &[])),
        (
            MANAGER,
            "GetUnitProcesses",
            method(&[&s], &[&sig::<Vec<(String, u32, String)>>()]),
        ),
        (MANAGER, "Version", read("s")),
        (MANAGER, "SystemState", read("s")),
        (MANAGER, "DefaultCPUAccounting", read("b")),
        (MANAGER, "DefaultMemoryAccounting", read("b")),
        (MANAGER, "DefaultTasksAccounting", read("b")),
        (UNIT, "LoadState", read("s")),
        (UNIT, "ActiveState", read("s")),
        (UNIT, "DropInPaths", read("as")),
        (SLICE, "ControlGroup", read("s")),
        (SLICE, "MemoryCurrent", read("t")),
        // Containers' scopes (ops::containers).
        (SCOPE, "ControlGroup", read("s")),
        (SCOPE, "MemoryCurrent", read("t")),
        (SCOPE, "TasksCurrent", read("t")),
    ];
    for p in Property::ACCOUNTING {
        v.push((SLICE, p.bus_name(), read("b")));
    }
    for p in Property::LIMITS {
        v.push((SLICE, p.bus_name(), read("t")));
    }
    v
}

/// The tags of an XML text: (name, attributes, closing `</x>`, self-closing `<x/>`).
fn tags(xml: &str) -> Vec<(String, BTreeMap<String, String>, bool, bool)> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        let mut quote = None;
        let end = rest
            .char_indices()
            .find(|&(_, c)| match quote {
                Some(q) if c == q => {
                    quote = None;
                    false
                }
                Some(_) => false,
                None if c == '"' || c == '\'' => {
                    quote = Some(c);
                    false
                }
                None => c == '>',
            })
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        let body = &rest[..end];
        rest = &rest[(end + 1).min(rest.len())..];
        if body.starts_with('!') || body.starts_with('?') {
            continue;
        }
        let closing = body.starts_with('/');
        let self_closing = body.ends_with('/');
        let body = body.trim_start_matches('/').trim_end_matches('/');
        let (name, mut attrs_text) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
        let mut attrs = BTreeMap::new();
        while let Some(eq) = attrs_text.find('=') {
            let key = attrs_text[..eq].trim().to_owned();
            let after = attrs_text[eq + 1..].trim_start();
            let Some(q) = after.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                break;
            };
            let value_end = after[1..].find(q).map(|i| i + 1).unwrap_or(after.len());
            attrs.insert(key, after[1..value_end].to_owned());
            attrs_text = &after[(value_end + 1).min(after.len())..];
        }
        out.push((name.to_owned(), attrs, closing, self_closing));
    }
    out
}

/// Methods (argument types in order, by direction) and properties of every interface.
fn parse(xml: &str) -> Interfaces {
    let mut out = Interfaces::new();
    let mut iface: Option<String> = None;
    let mut current: Option<(String, String, String)> = None;
    let mut in_signal = false;
    let finish = |out: &mut Interfaces, iface: &Option<String>, m: (String, String, String)| {
        if let Some(i) = iface {
            out.entry(i.clone()).or_default().insert(
                m.0,
                Member::Method {
                    inputs: m.1,
                    outputs: m.2,
                },
            );
        }
    };
    for (tag, attrs, closing, self_closing) in tags(xml) {
        let name = attrs.get("name").cloned().unwrap_or_default();
        match (tag.as_str(), closing) {
            ("interface", false) => iface = Some(name),
            ("interface", true) => iface = None,
            ("method", false) => {
                let m = (name, String::new(), String::new());
                if self_closing {
                    finish(&mut out, &iface, m);
                } else {
                    current = Some(m);
                }
            }
            ("method", true) => {
                if let Some(m) = current.take() {
                    finish(&mut out, &iface, m);
                }
            }
            ("signal", false) => in_signal = !self_closing,
            ("signal", true) => in_signal = false,
            ("arg", false) if !in_signal => {
                if let Some(m) = current.as_mut() {
                    let ty = attrs.get("type").cloned().unwrap_or_default();
                    match attrs.get("direction").map(String::as_str) {
                        Some("out") => m.2.push_str(&ty),
                        _ => m.1.push_str(&ty),
                    }
                }
            }
            ("property", false) => {
                if let Some(i) = &iface {
                    out.entry(i.clone()).or_default().insert(
                        name,
                        Member::Property {
                            ty: attrs.get("type").cloned().unwrap_or_default(),
                            access: attrs.get("access").cloned().unwrap_or_default(),
                        },
                    );
                }
            }
            _ => {}
        }
    }
    out
}

fn introspect(sb: &Sandbox, path: &str) -> String {
    let out = sb.busctl(&["introspect", "--xml-interface", proxies::SERVICE, path]);
    assert!(out.status.success(), "busctl introspect {path}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The members of `used()` missing from `ifaces` or different there, one line each.
fn mismatches(ifaces: &Interfaces, source: &str) -> Vec<String> {
    used()
        .into_iter()
        .filter_map(|(iface, member, want)| {
            let have = ifaces.get(iface).and_then(|m| m.get(member));
            (have != Some(&want))
                .then(|| format!("{source}: {iface}.{member}: we use {want:?}, it has {have:?}"))
        })
        .collect()
}

#[test]
fn systemd_serves_every_member_we_use_as_committed_in_dbus_dir() {
    let Some(sb) = sandbox_or_skip() else { return };
    let manager_xml = introspect(&sb, proxies::MANAGER_PATH);
    let slice_xml = introspect(&sb, &proxies::unit_object_path(PROBE));
    let scope_xml = introspect(&sb, &proxies::unit_object_path(SCOPE_PROBE));
    if std::env::var("DS01_BLESS_DBUS").is_ok_and(|v| v == "1") {
        fs::create_dir_all(DBUS_DIR).unwrap();
        fs::write(format!("{DBUS_DIR}/{MANAGER_XML}"), &manager_xml).unwrap();
        fs::write(format!("{DBUS_DIR}/{SLICE_XML}"), &slice_xml).unwrap();
        fs::write(format!("{DBUS_DIR}/{SCOPE_XML}"), &scope_xml).unwrap();
    }
    let mut live = parse(&manager_xml);
    live.extend(parse(&slice_xml));
    live.extend(parse(&scope_xml).into_iter().filter(|(i, _)| i == SCOPE));
    assert!(
        [MANAGER, UNIT, SLICE, SCOPE]
            .iter()
            .all(|i| live.contains_key(*i)),
        "interfaces missing from the introspection: {:?}",
        live.keys().collect::<Vec<_>>()
    );
    let mut problems = mismatches(&live, "live systemd");

    let committed = |file: &str| {
        fs::read_to_string(format!("{DBUS_DIR}/{file}")).unwrap_or_else(|e| {
            panic!("{DBUS_DIR}/{file}: {e}; run this test with DS01_BLESS_DBUS=1 to write it")
        })
    };
    let mut saved = parse(&committed(MANAGER_XML));
    saved.extend(parse(&committed(SLICE_XML)));
    saved.extend(
        parse(&committed(SCOPE_XML))
            .into_iter()
            .filter(|(i, _)| i == SCOPE),
    );
    problems.extend(mismatches(&saved, "dbus/"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_xml_parser_reads_methods_properties_and_skips_signals() {
    let xml = r#"<!DOCTYPE node PUBLIC "x" "y">
<node>
 <interface name="a.B">
  <method name="Ping"/>
  <method name="M">
   <arg type="s" name="x" direction="in"/>
   <arg name="y" direction="in" type="a(sv)"/>
   <arg type="o" name="z" direction="out"/>
  </method>
  <signal name="S">
   <arg type="u" name="n"/>
  </signal>
  <property name="P" type="t" access="read">
   <annotation name="org.freedesktop.DBus.Property.EmitsChangedSignal" value="false"/>
  </property>
 </interface>
 <node name="child"/>
</node>"#;
    let parsed = parse(xml);
    let b = &parsed["a.B"];
    assert_eq!(b.len(), 3, "{b:?}");
    assert_eq!(b["Ping"], method(&[], &[]));
    assert_eq!(b["M"], method(&["s", "a(sv)"], &["o"]));
    assert_eq!(b["P"], read("t"));
}

#[test]
fn our_proxies_and_client_round_trip_against_systemd() {
    let Some(sb) = sandbox_or_skip() else { return };
    let address = sb.bus_address();
    // Something running in the slice: it is active, with a cgroup and memory in use.
    let out = sb.systemd_run(&[
        "--unit=contract.service",
        &format!("--slice={PROBE}"),
        "sleep",
        "infinity",
    ]);
    assert!(out.status.success(), "{out:?}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let timeout = Duration::from_secs(10);
        let conn = zbus::connection::Builder::address(address.as_str())
            .unwrap()
            .build()
            .await
            .unwrap();
        let manager = ManagerProxy::new(&conn).await.unwrap();
        let path = proxies::unit_object_path(PROBE);
        assert_eq!(manager.load_unit(PROBE).await.unwrap().as_str(), path);
        assert_eq!(manager.get_unit(PROBE).await.unwrap().as_str(), path);
        // dbus/ was committed against 252; the contract holds for 252 (Debian 12) and 257
        // (Debian 13, the VM's second suite).
        let version = manager.version().await.unwrap();
        let major: u32 = version
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("systemd version {version:?}"));
        assert!(major >= 252, "systemd {version}");

        let sd = BusSystemd::connect(Some(&address), timeout).await.unwrap();
        assert_eq!(sd.system_state().await.unwrap(), "running");
        // The accounting defaults as systemctl reads them from the manager.
        let shown = |p: &str| {
            let out = sb.systemctl(&["show", "--value", &format!("--property={p}")]);
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap().trim() == "yes"
        };
        assert_eq!(
            sd.accounting_defaults().await.unwrap(),
            AccountingDefaults {
                cpu: shown("DefaultCPUAccounting"),
                memory: shown("DefaultMemoryAccounting"),
                tasks: shown("DefaultTasksAccounting"),
            }
        );
        let slice = SliceName::parse(PROBE).unwrap();
        let want: Vec<(Property, BusValue)> = Property::ACCOUNTING
            .iter()
            .map(|p| (*p, BusValue::Bool(true)))
            .chain([
                (Property::CpuQuotaPerSecUSec, BusValue::U64(500_000)),
                (Property::MemoryMax, BusValue::U64(64 << 20)),
                (Property::MemoryHigh, BusValue::U64(60 << 20)),
                (Property::TasksMax, BusValue::U64(20)),
            ])
            .collect();
        sd.pin(&slice).await.unwrap();
        sd.set_properties(&slice, WriteMode::Runtime, &want)
            .await
            .unwrap();
        sd.unpin(&slice).await.unwrap();
        sd.reload().await.unwrap();

        let live = sd.read_slice(&slice).await.unwrap();
        assert_eq!(
            (live.load_state.as_str(), live.active_state.as_str()),
            ("loaded", "active")
        );
        for (p, v) in &want {
            assert_eq!(live.value(*p), *v, "{p}");
        }
        assert_eq!(
            live.control_group.as_deref(),
            Some("/ds01.slice/ds01-contract.slice")
        );
        assert!(live.memory_current.is_some_and(|m| m > 0), "{live:?}");
        let dropin = format!("/run/systemd/system.control/{PROBE}.d/50-TasksMax.conf");
        // read_slice is the one-call fast path; the unit's state and drop-ins come separately.
        assert!(live.drop_in_paths.is_empty());
        let state = sd.read_unit_state(&slice).await.unwrap();
        assert_eq!(state.active_state, "active");
        assert!(state.drop_in_paths.contains(&dropin), "{state:?}");
        assert!(sd.loaded_slices().await.unwrap().contains(&slice));

        // A container's scope: listed wherever it runs, its cgroup and usage read.
        sb.start_sleeping_scope(SCOPE_PROBE, PROBE).unwrap();
        assert!(sd
            .container_scopes()
            .await
            .unwrap()
            .contains(&SCOPE_PROBE.to_owned()));
        let state = sd.read_scope(SCOPE_PROBE).await.unwrap();
        assert_eq!(
            state.control_group.as_deref(),
            Some(format!("/ds01.slice/{PROBE}/{SCOPE_PROBE}").as_str()),
            "{state:?}"
        );
        assert_eq!(state.tasks_current, Some(1), "{state:?}");

        let holder = sd.hold_loaded(std::slice::from_ref(&slice)).await.unwrap();
        assert_eq!(
            sd.stale_holders().await.unwrap(),
            std::slice::from_ref(&holder)
        );
        sd.release(&holder).await.unwrap();
    });
}
