//! `apply` on a host that was rendered before: systemd's live values then come from our
//! `10-resource-limits.conf` files, so apply would find them "already as configured", write
//! nothing, and removing the files afterwards would lift the limits. Hiding the rendered
//! values from apply's reads makes it write every one of them over D-Bus first; the files
//! can then go without a moment in which the limits are not in force.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::live::{LiveSlice, UnitState};
use crate::model::names::SliceName;
use crate::model::property::{BusValue, Property};
use crate::systemd::{BusError, Systemd, WriteMode};

/// A [`Systemd`] whose reads show the listed properties of the listed slices as unset.
pub struct RenderedMask<'a, S> {
    inner: &'a S,
    masked: BTreeMap<SliceName, BTreeSet<Property>>,
}

impl<'a, S: Systemd> RenderedMask<'a, S> {
    pub fn new(inner: &'a S, masked: BTreeMap<SliceName, BTreeSet<Property>>) -> Self {
        RenderedMask { inner, masked }
    }
}

impl<S: Systemd> Systemd for RenderedMask<'_, S> {
    async fn read_slice(&self, slice: &SliceName) -> Result<LiveSlice, BusError> {
        let mut live = self.inner.read_slice(slice).await?;
        if let Some(props) = self.masked.get(slice) {
            for p in props {
                live.values.remove(p);
            }
        }
        Ok(live)
    }

    async fn read_unit_state(&self, slice: &SliceName) -> Result<UnitState, BusError> {
        self.inner.read_unit_state(slice).await
    }

    async fn set_properties(
        &self,
        slice: &SliceName,
        mode: WriteMode,
        props: &[(Property, BusValue)],
    ) -> Result<(), BusError> {
        self.inner.set_properties(slice, mode, props).await
    }

    async fn loaded_slices(&self) -> Result<Vec<SliceName>, BusError> {
        self.inner.loaded_slices().await
    }

    async fn pin(&self, slice: &SliceName) -> Result<(), BusError> {
        self.inner.pin(slice).await
    }

    async fn unpin(&self, slice: &SliceName) -> Result<(), BusError> {
        self.inner.unpin(slice).await
    }

    async fn reload(&self) -> Result<(), BusError> {
        self.inner.reload().await
    }

    async fn hold_loaded(&self, slices: &[SliceName]) -> Result<String, BusError> {
        self.inner.hold_loaded(slices).await
    }

    async fn release(&self, holder: &str) -> Result<(), BusError> {
        self.inner.release(holder).await
    }

    async fn stale_holders(&self) -> Result<Vec<String>, BusError> {
        self.inner.stale_holders().await
    }

    async fn start_slice(&self, slice: &SliceName) -> Result<(), BusError> {
        self.inner.start_slice(slice).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    struct Fake {
        live: LiveSlice,
        writes: RefCell<Vec<Vec<(Property, BusValue)>>>,
    }

    impl Systemd for Fake {
        async fn read_slice(&self, _: &SliceName) -> Result<LiveSlice, BusError> {
            Ok(self.live.clone())
        }
        async fn read_unit_state(&self, _: &SliceName) -> Result<UnitState, BusError> {
            Ok(UnitState::default())
        }
        async fn set_properties(
            &self,
            _: &SliceName,
            _: WriteMode,
            props: &[(Property, BusValue)],
        ) -> Result<(), BusError> {
            self.writes.borrow_mut().push(props.to_vec());
            Ok(())
        }
        async fn loaded_slices(&self) -> Result<Vec<SliceName>, BusError> {
            Ok(vec![self.live.slice.clone()])
        }
        async fn pin(&self, _: &SliceName) -> Result<(), BusError> {
            Ok(())
        }
        async fn unpin(&self, _: &SliceName) -> Result<(), BusError> {
            Ok(())
        }
        async fn reload(&self) -> Result<(), BusError> {
            Ok(())
        }
    }

    #[test]
    fn masked_properties_read_as_unset_and_writes_pass_through() {
        let slice = SliceName::parse("ds01-student-alice.slice").unwrap();
        let fake = Fake {
            live: LiveSlice {
                slice: slice.clone(),
                load_state: "loaded".into(),
                active_state: "inactive".into(),
                control_group: None,
                memory_current: None,
                tasks_current: None,
                cpu_usage_nsec: None,
                values: [
                    (Property::MemoryMax, BusValue::U64(96 << 30)),
                    (Property::TasksMax, BusValue::U64(100)),
                ]
                .into(),
                drop_in_paths: vec![],
            },
            writes: RefCell::new(Vec::new()),
        };
        let mask = RenderedMask::new(
            &fake,
            [(slice.clone(), [Property::MemoryMax].into())].into(),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let live = mask.read_slice(&slice).await.unwrap();
            assert_eq!(live.value(Property::MemoryMax), BusValue::U64(u64::MAX));
            assert_eq!(live.value(Property::TasksMax), BusValue::U64(100));
            mask.set_properties(
                &slice,
                WriteMode::Persistent,
                &[(Property::TasksMax, BusValue::U64(1))],
            )
            .await
            .unwrap();
        });
        assert_eq!(fake.writes.borrow().len(), 1);
    }
}
