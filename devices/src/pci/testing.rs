//! Test doubles for the PCI unit tests: a recording [`MsiSink`].

use std::sync::{Arc, Mutex};

use virtual_iommu::MsiMessage;

use super::MsiSink;

/// One call a function made on its sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MsiCall {
    /// `set_vector_route(index, msg)`.
    Route(u16, Option<MsiMessage>),
    /// `set_vector_routes(routes)`.
    Batch(Vec<(u16, Option<MsiMessage>)>),
    /// `trigger_vector(index)`.
    Trigger(u16),
}

/// An [`MsiSink`] that records every call in order.
#[derive(Default)]
pub struct RecordingMsiSink {
    calls: Mutex<Vec<MsiCall>>,
    masks: Mutex<Vec<(u16, bool)>>,
}

impl RecordingMsiSink {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Returns and forgets the calls recorded so far.
    pub fn take(&self) -> Vec<MsiCall> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    /// Returns and forgets the mask changes reported so far.
    pub fn take_masks(&self) -> Vec<(u16, bool)> {
        std::mem::take(&mut *self.masks.lock().unwrap())
    }

    /// The triggers recorded so far (forgetting every call).
    pub fn take_triggers(&self) -> Vec<u16> {
        self.take()
            .into_iter()
            .filter_map(|c| match c {
                MsiCall::Trigger(v) => Some(v),
                _ => None,
            })
            .collect()
    }
}

impl MsiSink for RecordingMsiSink {
    fn set_vector_route(&self, index: u16, msg: Option<MsiMessage>) {
        self.calls.lock().unwrap().push(MsiCall::Route(index, msg));
    }

    fn set_vector_routes(&self, routes: &[(u16, Option<MsiMessage>)]) {
        self.calls
            .lock()
            .unwrap()
            .push(MsiCall::Batch(routes.to_vec()));
    }

    fn trigger_vector(&self, index: u16) {
        self.calls.lock().unwrap().push(MsiCall::Trigger(index));
    }

    fn set_vectors_masked(&self, changes: &[(u16, bool)]) {
        self.masks.lock().unwrap().extend_from_slice(changes);
    }
}
