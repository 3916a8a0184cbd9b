//! CPU topology: how `--cpus` maps to sockets, cores, threads and x2APIC IDs.

use thiserror::Error;

/// Topology errors (user input).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TopologyError {
    /// A count of zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// The product of sockets, cores and threads differs from the vCPU count.
    #[error("sockets={sockets} x cores={cores} x threads={threads} = {product}, but {cpus} vCPUs were asked for")]
    Mismatch {
        /// vCPUs asked for.
        cpus: u32,
        /// Sockets.
        sockets: u32,
        /// Cores per socket.
        cores: u32,
        /// Threads per core.
        threads: u32,
        /// Their product.
        product: u64,
    },
    /// APIC IDs would not fit in 32 bits.
    #[error("topology needs more than 32 bits of APIC ID")]
    TooWide,
}

/// A vCPU topology; x2APIC IDs are `socket << (core_bits + thread_bits) | core << thread_bits | thread`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Sockets (packages).
    pub sockets: u32,
    /// Cores per socket.
    pub cores: u32,
    /// Threads per core.
    pub threads: u32,
}

/// Number of bits needed to number `n` items (0 for 1).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

impl Topology {
    /// One socket of `cpus` single-threaded cores.
    pub fn flat(cpus: u32) -> Result<Self, TopologyError> {
        Self::new(cpus, 1, cpus, 1)
    }

    /// A checked topology for `cpus` vCPUs.
    pub fn new(cpus: u32, sockets: u32, cores: u32, threads: u32) -> Result<Self, TopologyError> {
        for (name, v) in [
            ("cpus", cpus),
            ("sockets", sockets),
            ("cores", cores),
            ("threads", threads),
        ] {
            if v == 0 {
                return Err(TopologyError::Zero(name));
            }
        }
        let product = u64::from(sockets) * u64::from(cores) * u64::from(threads);
        if product != u64::from(cpus) {
            return Err(TopologyError::Mismatch {
                cpus,
                sockets,
                cores,
                threads,
                product,
            });
        }
        let t = Topology {
            sockets,
            cores,
            threads,
        };
        if t.thread_bits() + t.core_bits() + bits_for(sockets) > 32 {
            return Err(TopologyError::TooWide);
        }
        Ok(t)
    }

    /// Total vCPUs.
    pub fn cpus(&self) -> u32 {
        self.sockets * self.cores * self.threads
    }

    /// Bits of the APIC ID that number the thread within a core.
    pub fn thread_bits(&self) -> u32 {
        bits_for(self.threads)
    }

    /// Bits of the APIC ID that number the core within a socket.
    pub fn core_bits(&self) -> u32 {
        bits_for(self.cores)
    }

    /// Logical processors per socket.
    pub fn per_socket(&self) -> u32 {
        self.cores * self.threads
    }

    /// The x2APIC ID of vCPU `index` (0-based, in socket/core/thread order).
    pub fn apic_id(&self, index: u32) -> u32 {
        let thread = index % self.threads;
        let core = (index / self.threads) % self.cores;
        let socket = index / self.per_socket();
        (socket << (self.core_bits() + self.thread_bits())) | (core << self.thread_bits()) | thread
    }

    /// All x2APIC IDs in vCPU order.
    pub fn apic_ids(&self) -> Vec<u32> {
        (0..self.cpus()).map(|i| self.apic_id(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_ids_are_dense() {
        let t = Topology::flat(5).unwrap();
        assert_eq!(t.apic_ids(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn sockets_and_threads_shape_ids() {
        let t = Topology::new(12, 2, 3, 2).unwrap();
        // threads: 1 bit, cores: 2 bits.
        assert_eq!(t.apic_id(0), 0);
        assert_eq!(t.apic_id(1), 1);
        assert_eq!(t.apic_id(2), 2);
        assert_eq!(t.apic_id(5), 5);
        assert_eq!(t.apic_id(6), 8);
        assert_eq!(t.apic_id(11), 13);
    }

    #[test]
    fn rejects_bad_products_and_zeros() {
        assert!(matches!(
            Topology::new(10, 2, 3, 2),
            Err(TopologyError::Mismatch { .. })
        ));
        assert_eq!(Topology::new(0, 1, 0, 1), Err(TopologyError::Zero("cpus")));
    }
}
