//! Whether the host can post irqfd vectors, and the one line per device that says how many
//! of its vectors it can post (at start and whenever the number changes).

use super::policy::postable;
use super::registry::{Delivery, Registry};

/// Whether this host posts interrupts KVM delivers through irqfds (read from the host by
/// the VMM at start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPosting {
    /// The host can post.
    pub available: bool,
    /// How that was determined (or why not).
    pub reason: String,
}

impl Default for HostPosting {
    fn default() -> Self {
        HostPosting {
            available: false,
            reason: "not determined".into(),
        }
    }
}

/// One group's vectors: how many are enabled (have a message), bound to KVM, postable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCounts {
    /// Vectors with a message.
    pub enabled: usize,
    /// Vectors KVM delivers itself (irqfd bound).
    pub in_kvm: usize,
    /// Vectors a posting host posts: bound to KVM with a postable route.
    pub postable: usize,
}

/// Counts group `g`'s vectors.
pub(crate) fn count(reg: &Registry, g: usize, host: &HostPosting) -> GroupCounts {
    let mut c = GroupCounts::default();
    let Some(group) = reg.groups.get(g) else {
        return c;
    };
    for src in group
        .handles
        .clone()
        .filter_map(|h| reg.sources.get(h as usize))
    {
        let Delivery::Irqfd(v) = &src.delivery else {
            continue;
        };
        if src.raw.is_some() {
            c.enabled += 1;
        }
        if v.attached {
            c.in_kvm += 1;
            if host.available && src.xlat.route.is_some_and(|r| postable(&r)) {
                c.postable += 1;
            }
        }
    }
    c
}

/// Logs group `g`'s line when what it says changed: on a posting host, when the number of
/// enabled vectors the host cannot post changes (a guest enabling vectors one by one adds
/// postable ones without a line each); on a host that cannot post, once. Every change is
/// logged at debug level.
pub(crate) fn report(reg: &mut Registry, g: usize, host: &HostPosting) {
    let c = count(reg, g, host);
    let Some(group) = reg.groups.get_mut(g) else {
        return;
    };
    let key = if host.available {
        (c.enabled.saturating_sub(c.postable), 0)
    } else {
        (0, 0)
    };
    log::debug!(
        "{}: {} of {} vectors postable, {} in KVM",
        group.name,
        c.postable,
        c.enabled,
        c.in_kvm
    );
    if group.reported == Some(key) {
        return;
    }
    group.reported = Some(key);
    if host.available {
        log::info!(
            "{}: {} of {} vectors postable",
            group.name,
            c.postable,
            c.enabled
        );
    } else {
        log::info!(
            "{}: vectors not postable: the host cannot post ({}); enabled vectors are delivered by KVM through irqfds",
            group.name,
            host.reason
        );
    }
}
