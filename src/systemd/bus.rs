//! systemd over one shared zbus connection: the only code that talks to systemd.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use zbus::zvariant::{OwnedValue, Value};

use super::convert::{as_bool, as_string, as_strings, as_u64, to_value};
use super::ended::Ended;
use super::pipeline::{HOLDER_PREFIX, MAX_IN_FLIGHT};
use super::proxies::{self, ManagerProxy};
use super::stats::{BusStats, BusStatsSnapshot, CallSlot};
use super::{BusError, Systemd, WriteMode};
use crate::model::containers::SCOPE_PATTERNS;
use crate::model::live::{LiveSlice, ScopeState, UnitState};
use crate::model::names::SliceName;
use crate::model::property::{BusValue, Property};

/// The system bus's address unless DBUS_SYSTEM_BUS_ADDRESS says otherwise (the D-Bus
/// specification's default; /var/run is a link to /run on every current distribution).
pub const SYSTEM_BUS_ADDRESS: &str = "unix:path=/run/dbus/system_bus_socket";

/// A holder outlives a crashed run by at most this long: its process then exits and
/// systemd collects it.
const HOLDER_LIFETIME_SECS: &str = "900";

/// The accounting systemd turns on for units that do not say (`Default*Accounting=` in
/// system.conf).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AccountingDefaults {
    pub cpu: bool,
    pub memory: bool,
    pub tasks: bool,
}

/// systemd over one shared zbus connection.
#[derive(Clone)]
pub struct BusSystemd {
    connection: zbus::Connection,
    manager: ManagerProxy<'static>,
    timeout: Duration,
    address: String,
    slots: Arc<tokio::sync::Semaphore>,
    stats: Arc<BusStats>,
    ended: Arc<Ended>,
    /// What carries the connection and must live as long as it (the ssh of `--host`), if
    /// anything: dropped with the last clone.
    _carrier: Option<Arc<dyn Send + Sync>>,
}

impl BusSystemd {
    /// Connects to `address` (a D-Bus address), or the system bus (honouring
    /// `DBUS_SYSTEM_BUS_ADDRESS`) when `None`, and checks that systemd is there.
    pub async fn connect(address: Option<&str>, timeout: Duration) -> Result<BusSystemd, BusError> {
        let shown = address
            .map(str::to_owned)
            .or_else(|| std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok())
            .unwrap_or_else(|| SYSTEM_BUS_ADDRESS.to_owned());
        let path = plain_unix_path(&shown).map(str::to_owned);
        let connect = async {
            Ok(match path {
                // zbus connects a Unix socket on a thread of its own; a hook pays for that
                // thread on every container start, so the common case connects here.
                Some(path) => tokio::net::UnixStream::connect(path)
                    .await
                    .map(zbus::connection::Builder::unix_stream)
                    .map_err(|e| zbus::Error::InputOutput(Arc::new(e)))?,
                None => match address {
                    Some(a) => zbus::connection::Builder::address(a)?,
                    None => zbus::connection::Builder::system()?,
                },
            })
        };
        BusSystemd::finish(connect, shown, timeout, None).await
    }

    /// Connects over `stream`, whose other end is a D-Bus connection (the stdio of `ssh HOST
    /// systemd-stdio-bridge`), kept with `carrier` for as long as the connection lives;
    /// `shown` names it in messages.
    pub async fn connect_over(
        stream: tokio::net::UnixStream,
        shown: String,
        timeout: Duration,
        carrier: Arc<dyn Send + Sync>,
    ) -> Result<BusSystemd, BusError> {
        let connect = async { Ok(zbus::connection::Builder::unix_stream(stream)) };
        BusSystemd::finish(connect, shown, timeout, Some(carrier)).await
    }

    /// The connection `builder` makes, within `timeout`, with systemd checked to be there.
    async fn finish(
        builder: impl std::future::Future<Output = zbus::Result<zbus::connection::Builder<'_>>>,
        shown: String,
        timeout: Duration,
        carrier: Option<Arc<dyn Send + Sync>>,
    ) -> Result<BusSystemd, BusError> {
        let unreachable = |e: zbus::Error| BusError::Unreachable {
            address: shown.clone(),
            reason: e.to_string(),
        };
        let connect = async { builder.await?.method_timeout(timeout).build().await };
        let connection = match tokio::time::timeout(timeout, connect).await {
            Ok(result) => result.map_err(unreachable)?,
            Err(_) => {
                return Err(BusError::Timeout {
                    what: format!("connecting to the system bus at {shown}"),
                    secs: timeout.as_secs(),
                })
            }
        };
        let manager = ManagerProxy::builder(&connection)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(unreachable)?;
        Ok(BusSystemd {
            manager,
            timeout,
            address: shown,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            stats: Arc::new(BusStats::default()),
            ended: Arc::new(Ended::new(connection.clone(), timeout)),
            _carrier: carrier,
            connection,
        })
    }

    pub fn stats(&self) -> BusStatsSnapshot {
        self.stats.snapshot()
    }

    async fn slot(&self) -> Result<CallSlot<'_>, BusError> {
        if let Some(e) = self.ended.get().await {
            return Err(e);
        }
        // Invariant: this struct owns the semaphore and never closes it, so acquire cannot
        // fail.
        let permit = match self.slots.acquire().await {
            Ok(p) => p,
            Err(_) => unreachable_semaphore(),
        };
        if let Some(e) = self.ended.get().await {
            return Err(e);
        }
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let now = self.stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats.max_in_flight.fetch_max(now, Ordering::Relaxed);
        if now == 1 {
            self.stats.busy().since = Some(std::time::Instant::now());
        }
        Ok(CallSlot {
            stats: &self.stats,
            _permit: permit,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// A call's result: an answer shows systemd on the bus; an error is classified, and one
    /// that ends the connection becomes the run's one error (ended.rs names its cause).
    async fn settle<T>(
        &self,
        what: impl Into<String>,
        result: zbus::Result<T>,
    ) -> Result<T, BusError> {
        match result {
            Ok(v) => {
                self.ended.answered();
                Ok(v)
            }
            Err(e) => {
                let e = BusError::from_zbus(what, e, self.timeout, &self.address);
                Err(if e.ends_connection() {
                    self.ended.end(e).await
                } else {
                    e
                })
            }
        }
    }

    /// Checks that systemd answers, returning its version.
    pub async fn version(&self) -> Result<String, BusError> {
        let r = self.manager.version().await;
        self.settle("reading systemd's Version", r).await
    }

    /// systemd's `DefaultCPUAccounting`, `DefaultMemoryAccounting` and
    /// `DefaultTasksAccounting` (system.conf), read now: the proxy caches nothing.
    pub async fn accounting_defaults(&self) -> Result<AccountingDefaults, BusError> {
        let read = |what: &str| format!("reading systemd's {what}");
        let cpu = self.manager.default_cpu_accounting().await;
        let cpu = self.settle(read("DefaultCPUAccounting"), cpu).await?;
        let memory = self.manager.default_memory_accounting().await;
        let memory = self.settle(read("DefaultMemoryAccounting"), memory).await?;
        let tasks = self.manager.default_tasks_accounting().await;
        let tasks = self.settle(read("DefaultTasksAccounting"), tasks).await?;
        Ok(AccountingDefaults { cpu, memory, tasks })
    }

    pub async fn system_state(&self) -> Result<String, BusError> {
        let r = self.manager.system_state().await;
        self.settle("reading systemd's SystemState", r).await
    }

    /// Every process in `unit`'s cgroup tree as systemd sees it: (cgroup path, PID in
    /// systemd's PID namespace). A unit that is not loaded is NoSuchUnit.
    pub async fn unit_processes(&self, unit: &str) -> Result<Vec<(String, u32)>, BusError> {
        let _slot = self.slot().await?;
        let listed = self.manager.get_unit_processes(unit).await;
        let listed = self
            .settle(format!("listing the processes of {unit}"), listed)
            .await?;
        Ok(listed.into_iter().map(|(cg, pid, _)| (cg, pid)).collect())
    }

    async fn get_unit_property(
        &self,
        slice: &SliceName,
        prop: &'static str,
    ) -> Result<OwnedValue, BusError> {
        self.get_property(slice, proxies::UNIT_INTERFACE, prop)
            .await
    }

    async fn get_property(
        &self,
        slice: &SliceName,
        interface: &'static str,
        prop: &'static str,
    ) -> Result<OwnedValue, BusError> {
        let path = proxies::unit_object_path(slice.as_str());
        let what = format!("reading {prop} of {slice}");
        let _slot = self.slot().await?;
        let reply = self
            .connection
            .call_method(
                Some(proxies::SERVICE),
                path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(interface, prop),
            )
            .await;
        let reply = self.settle(what.clone(), reply).await?;
        reply
            .body()
            .deserialize::<OwnedValue>()
            .map_err(|e| BusError::Protocol {
                what,
                detail: e.to_string(),
            })
    }

    async fn get_all(
        &self,
        path: &str,
        interface: &str,
        what: &str,
    ) -> Result<HashMap<String, OwnedValue>, BusError> {
        let _slot = self.slot().await?;
        let reply = self
            .connection
            .call_method(
                Some(proxies::SERVICE),
                path,
                Some("org.freedesktop.DBus.Properties"),
                "GetAll",
                &(interface,),
            )
            .await;
        let reply = self.settle(what, reply).await?;
        reply
            .body()
            .deserialize::<HashMap<String, OwnedValue>>()
            .map_err(|e| BusError::Protocol {
                what: what.to_owned(),
                detail: e.to_string(),
            })
    }
}

/// The socket path of a D-Bus address that is exactly `unix:path=PATH` with nothing to
/// unescape; anything else is left to zbus's address parser.
fn plain_unix_path(address: &str) -> Option<&str> {
    let path = address.strip_prefix("unix:path=")?;
    let plain = !path.is_empty() && !path.contains([',', ';', '%']);
    plain.then_some(path)
}

#[cold]
fn unreachable_semaphore() -> ! {
    // BusSystemd owns the semaphore and never closes it.
    panic!("the bus call semaphore was closed")
}

impl Systemd for BusSystemd {
    async fn read_slice(&self, slice: &SliceName) -> Result<LiveSlice, BusError> {
        let path = proxies::unit_object_path(slice.as_str());
        let what = format!("reading slice properties of {slice}");
        // One call per slice: the Slice interface holds every value apply needs, and each
        // call on a unit that is not loaded makes systemd load it (the costly part).
        let props = self.get_all(&path, proxies::SLICE_INTERFACE, &what).await?;
        let mut values = BTreeMap::new();
        for p in Property::ACCOUNTING {
            if let Some(b) = as_bool(props.get(p.bus_name())) {
                values.insert(p, BusValue::Bool(b));
            }
        }
        for p in Property::LIMITS {
            if let Some(n) = as_u64(props.get(p.bus_name())) {
                values.insert(p, BusValue::U64(n));
            }
        }
        let memory_current = as_u64(props.get("MemoryCurrent")).filter(|n| *n != u64::MAX);
        let tasks_current = as_u64(props.get("TasksCurrent")).filter(|n| *n != u64::MAX);
        let cpu_usage_nsec = as_u64(props.get("CPUUsageNSec")).filter(|n| *n != u64::MAX);
        let control_group = as_string(props.get("ControlGroup")).filter(|s| !s.is_empty());
        // A slice has a cgroup exactly while it is started; read_unit_state tells precisely.
        let active_state = if control_group.is_some() {
            "active"
        } else {
            "inactive"
        };
        Ok(LiveSlice {
            slice: slice.clone(),
            load_state: "loaded".to_owned(),
            active_state: active_state.to_owned(),
            control_group,
            memory_current,
            tasks_current,
            cpu_usage_nsec,
            values,
            drop_in_paths: Vec::new(),
        })
    }

    async fn read_unit_state(&self, slice: &SliceName) -> Result<UnitState, BusError> {
        let (active, dropins) = tokio::join!(
            self.get_unit_property(slice, "ActiveState"),
            self.get_unit_property(slice, "DropInPaths")
        );
        Ok(UnitState {
            active_state: as_string(Some(&active?)).unwrap_or_default(),
            drop_in_paths: as_strings(Some(&dropins?)),
        })
    }

    async fn read_cpu_usage(&self, slice: &SliceName) -> Result<Option<u64>, BusError> {
        let v = self
            .get_property(slice, proxies::SLICE_INTERFACE, "CPUUsageNSec")
            .await?;
        Ok(as_u64(Some(&v)).filter(|n| *n != u64::MAX))
    }

    async fn start_slice(&self, slice: &SliceName) -> Result<(), BusError> {
        let _slot = self.slot().await?;
        let r = self.manager.start_unit(slice.as_str(), "fail").await;
        self.settle(format!("starting {slice}"), r).await.map(drop)
    }

    async fn set_properties(
        &self,
        slice: &SliceName,
        mode: WriteMode,
        props: &[(Property, BusValue)],
    ) -> Result<(), BusError> {
        let values: Vec<(&str, Value<'_>)> = props
            .iter()
            .map(|(p, v)| (p.bus_name(), to_value(*v)))
            .collect();
        let names: Vec<&str> = props.iter().map(|(p, _)| p.bus_name()).collect();
        let _slot = self.slot().await?;
        let r = self
            .manager
            .set_unit_properties(slice.as_str(), mode == WriteMode::Runtime, &values)
            .await;
        self.settle(format!("setting {} on {slice}", names.join(", ")), r)
            .await
    }

    async fn loaded_slices(&self) -> Result<Vec<SliceName>, BusError> {
        let _slot = self.slot().await?;
        let rows = self
            .manager
            .list_units_by_patterns(&[], &["ds01.slice", "ds01-*.slice"])
            .await;
        let rows = self.settle("listing loaded ds01 slices", rows).await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| SliceName::parse(&row.0).ok())
            .collect())
    }

    async fn pin(&self, slice: &SliceName) -> Result<(), BusError> {
        let _slot = self.slot().await?;
        let r = self.manager.ref_unit(slice.as_str()).await;
        self.settle(format!("pinning {slice}"), r).await?;
        let now = self.stats.pinned.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats.max_pinned.fetch_max(now, Ordering::Relaxed);
        Ok(())
    }

    async fn unpin(&self, slice: &SliceName) -> Result<(), BusError> {
        let _slot = self.slot().await?;
        let r = self.manager.unref_unit(slice.as_str()).await;
        self.settle(format!("releasing {slice}"), r).await?;
        self.stats.pinned.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    async fn reload(&self) -> Result<(), BusError> {
        let _slot = self.slot().await?;
        let r = self.manager.reload().await;
        self.settle("reloading systemd (Manager.Reload)", r).await
    }

    async fn hold_loaded(&self, slices: &[SliceName]) -> Result<String, BusError> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "{HOLDER_PREFIX}{}-{}.service",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let after: Vec<&str> = slices.iter().map(SliceName::as_str).collect();
        let exec: Vec<(&str, Vec<&str>, bool)> = vec![(
            "/bin/sleep",
            vec!["/bin/sleep", HOLDER_LIFETIME_SECS],
            false,
        )];
        let props: Vec<(&str, Value<'_>)> = vec![
            (
                "Description",
                Value::from("ds01-slices: keeps ds01 slices loaded while their limits are written"),
            ),
            ("After", Value::from(after)),
            ("ExecStart", Value::from(exec)),
            ("CollectMode", Value::from("inactive-or-failed")),
        ];
        let _slot = self.slot().await?;
        let r = self
            .manager
            .start_transient_unit(&name, "fail", &props, &[])
            .await;
        let what = format!("starting holder unit {name} for {} slices", slices.len());
        self.settle(what, r).await?;
        Ok(name)
    }

    async fn release(&self, holder: &str) -> Result<(), BusError> {
        let _slot = self.slot().await?;
        let r = self.manager.stop_unit(holder, "replace").await;
        self.settle(format!("stopping holder unit {holder}"), r)
            .await
            .map(drop)
    }

    async fn container_scopes(&self) -> Result<Vec<String>, BusError> {
        let _slot = self.slot().await?;
        let rows = self
            .manager
            .list_units_by_patterns(&[], &SCOPE_PATTERNS)
            .await;
        let rows = self.settle("listing container scopes", rows).await?;
        // A stopped scope has no cgroup left to run anything in.
        Ok(rows
            .into_iter()
            .filter(|r| !matches!(r.3.as_str(), "inactive" | "failed"))
            .map(|r| r.0)
            .collect())
    }

    async fn read_scope(&self, unit: &str) -> Result<ScopeState, BusError> {
        let path = proxies::unit_object_path(unit);
        let what = format!("reading scope {unit}");
        let props = self.get_all(&path, proxies::SCOPE_INTERFACE, &what).await?;
        let known = |name: &str| as_u64(props.get(name)).filter(|n| *n != u64::MAX);
        Ok(ScopeState {
            control_group: as_string(props.get("ControlGroup")).filter(|s| !s.is_empty()),
            memory_current: known("MemoryCurrent"),
            tasks_current: known("TasksCurrent"),
        })
    }

    async fn stale_holders(&self) -> Result<Vec<String>, BusError> {
        let pattern = format!("{HOLDER_PREFIX}*.service");
        let _slot = self.slot().await?;
        let rows = self
            .manager
            .list_units_by_patterns(&[], &[pattern.as_str()])
            .await;
        let rows = self.settle("listing holder units", rows).await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}
