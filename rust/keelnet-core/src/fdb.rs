//! The forwarding database (FDB): `(VNI, MAC)` → where frames for that MAC go.
//!
//! A destination is a local port of the switch or a remote VTEP (the underlay address
//! of the host behind which the MAC lives). Entries are either *learned* from the source
//! address of received frames, refreshed on every frame and removed by [`Fdb::age`] when
//! not seen for `max_age`, or *static* (configured): learning never overwrites a static
//! entry and aging never removes it.
//!
//! Time is whatever monotonic clock the caller uses (nanoseconds, ticks, …): every
//! method that needs it takes `now` explicitly, so tests and benchmarks are deterministic
//! and the hot path makes no clock call.
//!
//! Per VNI the table also keeps the flood list (remote VTEPs that get a copy of
//! broadcast, unknown-unicast and multicast frames: head-end replication) and a limit on
//! learned entries, so a flood of forged source MACs in one network can neither exhaust
//! memory nor evict the entries of other networks.
//!
//! Layout: one open-addressing table with linear probing over 16-byte slots (key, flags,
//! destination), hashed with a seeded multiply-fold of the key, and a parallel array of
//! expiry deadlines. A lookup is usually one cache line; learning a known MAC rewrites
//! its deadline in place; an aging sweep reads only the deadline array, back to front,
//! so that slots it frees in front of an empty slot become empty rather than tombstones.
//! Remote VTEP addresses are interned so a slot holds a 32-bit index, not an `IpAddr`.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::net::IpAddr;

/// A MAC address, most significant octet first (as on the wire).
pub type MacAddr = [u8; 6];

/// Where frames for a MAC are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A local port of the switch (its id is the switch's business).
    Port(u32),
    /// A remote VTEP: the frame is VXLAN-encapsulated to this underlay address.
    Remote(IpAddr),
}

/// What [`Fdb::learn`] did with a source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LearnOutcome {
    /// A new learned entry was created.
    Learned,
    /// The entry existed with the same destination; its timestamp was refreshed.
    Refreshed,
    /// The MAC was known behind another destination and now points to the new one.
    /// Frequent moves of one MAC mean a loop or a spoofing host.
    Moved { from: Destination },
    /// A static entry exists for this MAC; it was left unchanged. If the destination
    /// differs, a host is using an address configured elsewhere.
    StaticKept { configured: Destination },
    /// The MAC was learned behind a local port and a remote VTEP claimed it: a remote
    /// host never takes a local MAC over (it ages out if the host really moved).
    LocalKept { port: u32 },
    /// The VNI already holds its limit of learned entries; nothing was learned.
    LimitReached,
    /// Group (multicast/broadcast) or all-zero source MACs are never learned.
    InvalidSource,
}

/// Event counters since the table was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FdbCounters {
    pub learned: u64,
    pub refreshed: u64,
    pub moves: u64,
    /// Learn attempts that met a static entry with a different destination.
    pub static_conflicts: u64,
    /// Learn attempts of a remote VTEP for a MAC learned behind a local port.
    pub local_conflicts: u64,
    /// Learn attempts refused because the VNI was at its limit.
    pub limit_drops: u64,
    /// Learn attempts with a group or zero source MAC.
    pub invalid_sources: u64,
    /// Learned entries removed by [`Fdb::age`].
    pub aged_out: u64,
}

/// Table-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbConfig {
    /// A learned entry not refreshed for this long (in the caller's clock units) is
    /// removed by the next [`Fdb::age`] sweep. Deadlines saturate near `u64::MAX`.
    pub max_age: u64,
    /// Learned entries allowed per VNI unless [`Fdb::set_learn_limit`] says otherwise.
    pub default_learn_limit: u32,
}

impl Default for FdbConfig {
    /// Linux bridge defaults: 300 s ageing (in nanoseconds), and a limit of 64 K learned
    /// MACs per network.
    fn default() -> Self {
        FdbConfig {
            max_age: 300_000_000_000,
            default_learn_limit: 65_536,
        }
    }
}

// Slot flag bits, kept in the top 16 bits of the 48-bit MAC word so a probe compares one
// u64 and one u32.
const MAC_MASK: u64 = (1 << 48) - 1;
const OCCUPIED: u64 = 1 << 63;
const TOMBSTONE: u64 = 1 << 62;
const STATIC: u64 = 1 << 61;
const REMOTE: u64 = 1 << 60;
const KEY_MASK: u64 = MAC_MASK | OCCUPIED;

// Deadline array values above any real deadline mark slots that never expire.
const EMPTY_MARK: u64 = u64::MAX;
const TOMBSTONE_MARK: u64 = u64::MAX - 1;
const STATIC_MARK: u64 = u64::MAX - 2;
const LATEST_DEADLINE: u64 = u64::MAX - 3;

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct Slot {
    /// MAC in the low 48 bits, flags above. All zero: never used.
    tagged_mac: u64,
    vni: u32,
    /// Port id, or index into `vteps` when `REMOTE` is set.
    dest: u32,
}

impl Slot {
    #[inline]
    fn is_live(&self) -> bool {
        self.tagged_mac & OCCUPIED != 0
    }
}

#[derive(Debug, Default, Clone)]
struct VniState {
    learned: u32,
    limit: Option<u32>,
    flood: Vec<IpAddr>,
}

/// Small keys (VNI, IP) of the side tables do not need SipHash's DoS resistance: their
/// size is bounded by configuration, not by traffic.
#[derive(Default, Clone, Copy)]
struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = fold_mul(self.0 ^ u64::from_le_bytes(word), 0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, value: u32) {
        self.0 = fold_mul(self.0 ^ u64::from(value), 0x9E37_79B9_7F4A_7C15);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FoldHasher>>;

#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let wide = u128::from(a) * u128::from(b);
    (wide as u64) ^ ((wide >> 64) as u64)
}

#[inline(always)]
fn mac_to_u64(mac: &MacAddr) -> u64 {
    u64::from_be_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]])
}

#[inline(always)]
fn u64_to_mac(word: u64) -> MacAddr {
    let b = word.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

const MIN_CAPACITY: usize = 16;

/// The forwarding table. See the module documentation.
#[derive(Debug, Clone)]
pub struct Fdb {
    slots: Vec<Slot>,
    /// Per slot: when a learned entry expires, or one of the `*_MARK` values.
    deadlines: Vec<u64>,
    /// `slots.len() - 1`; the length is a power of two.
    mask: usize,
    live: usize,
    tombstones: usize,
    seeds: [u64; 2],
    config: FdbConfig,
    vnis: FastMap<u32, VniState>,
    /// Interned remote VTEP addresses with the number of slots referring to each.
    vteps: Vec<(IpAddr, u32)>,
    vtep_index: FastMap<IpAddr, u32>,
    free_vteps: Vec<u32>,
    counters: FdbCounters,
    /// Reused by [`Fdb::age`] for its bitmap of expired slots.
    expired_scratch: Vec<u64>,
}

/// Per-VNI learned counts to subtract after a sweep, gathered in a small direct-mapped
/// cache: a host has few networks, and a map update per removed entry would dominate.
struct ForgottenCounts([(u32, u32); 64]);

impl Default for ForgottenCounts {
    fn default() -> Self {
        ForgottenCounts([(0, 0); 64])
    }
}

impl ForgottenCounts {
    fn add(&mut self, fdb: &mut Fdb, vni: u32) {
        let cached = &mut self.0[vni as usize % 64];
        if cached.0 != vni && cached.1 != 0 {
            fdb.forget_learned(cached.0, cached.1);
            cached.1 = 0;
        }
        *cached = (vni, cached.1 + 1);
    }

    fn flush(&mut self, fdb: &mut Fdb) {
        for (vni, count) in self.0 {
            if count != 0 {
                fdb.forget_learned(vni, count);
            }
        }
    }
}

impl Default for Fdb {
    fn default() -> Self {
        Fdb::new(FdbConfig::default())
    }
}

impl Fdb {
    /// An empty table.
    pub fn new(config: FdbConfig) -> Self {
        Fdb::with_capacity(config, 0)
    }

    /// An empty table that holds `entries` without growing.
    pub fn with_capacity(config: FdbConfig, entries: usize) -> Self {
        // A per-table random seed keeps an attacker who picks source MACs from
        // predicting collisions and building long probe chains.
        let random = std::collections::hash_map::RandomState::new();
        let seeds = [random.hash_one(1u32), random.hash_one(2u32)];
        let capacity = Self::capacity_for(entries);
        Fdb {
            slots: vec![Slot::default(); capacity],
            deadlines: vec![EMPTY_MARK; capacity],
            mask: capacity - 1,
            live: 0,
            tombstones: 0,
            seeds,
            config,
            vnis: FastMap::default(),
            vteps: Vec::new(),
            vtep_index: FastMap::default(),
            free_vteps: Vec::new(),
            counters: FdbCounters::default(),
            expired_scratch: Vec::new(),
        }
    }

    /// Slots for `entries` at a load of at most 1/2, keeping linear probes short.
    fn capacity_for(entries: usize) -> usize {
        entries
            .saturating_mul(2)
            .max(MIN_CAPACITY)
            .checked_next_power_of_two()
            .unwrap_or(1 << (usize::BITS - 1))
    }

    /// Number of entries (learned and static).
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The settings the table was made with.
    pub fn config(&self) -> FdbConfig {
        self.config
    }

    /// Event counters.
    pub fn counters(&self) -> FdbCounters {
        self.counters
    }

    #[inline(always)]
    fn hash(&self, vni: u32, mac: u64) -> usize {
        fold_mul(mac ^ self.seeds[0], u64::from(vni) ^ self.seeds[1]) as usize
    }

    /// Index of the live slot holding the key, if any.
    #[inline(always)]
    fn find(&self, vni: u32, mac: u64) -> Option<usize> {
        let wanted = mac | OCCUPIED;
        let mut index = self.hash(vni, mac) & self.mask;
        // The table always keeps empty slots (load <= 3/4 including tombstones), so the
        // probe ends.
        loop {
            let slot = &self.slots[index];
            if slot.tagged_mac & KEY_MASK == wanted && slot.vni == vni {
                return Some(index);
            }
            if slot.tagged_mac == 0 {
                return None;
            }
            index = (index + 1) & self.mask;
        }
    }

    /// Where frames for `mac` in `vni` go, if known.
    #[inline]
    pub fn lookup(&self, vni: u32, mac: &MacAddr) -> Option<Destination> {
        let index = self.find(vni, mac_to_u64(mac))?;
        Some(self.destination_of(&self.slots[index]))
    }

    #[inline(always)]
    fn destination_of(&self, slot: &Slot) -> Destination {
        if slot.tagged_mac & REMOTE != 0 {
            Destination::Remote(self.vteps[slot.dest as usize].0)
        } else {
            Destination::Port(slot.dest)
        }
    }

    /// True when the slot's destination equals `dest`, without interning anything.
    #[inline(always)]
    fn same_destination(&self, slot: &Slot, dest: &Destination) -> bool {
        match *dest {
            Destination::Port(port) => slot.tagged_mac & REMOTE == 0 && slot.dest == port,
            Destination::Remote(addr) => {
                slot.tagged_mac & REMOTE != 0 && self.vteps[slot.dest as usize].0 == addr
            }
        }
    }

    /// Learns that `mac` (a frame's source) lives behind `dest` in `vni` at time `now`.
    ///
    /// Refreshing a known MAC is a probe and a store. Static entries are never changed;
    /// group and zero MACs are never learned; a VNI at its learn limit learns nothing new
    /// (known MACs are still refreshed and may still move).
    #[inline]
    pub fn learn(&mut self, vni: u32, mac: &MacAddr, dest: Destination, now: u64) -> LearnOutcome {
        // Bit 0 of the first octet marks group addresses (RFC 7042); they are never sources.
        if mac[0] & 1 != 0 || *mac == [0; 6] {
            self.counters.invalid_sources += 1;
            return LearnOutcome::InvalidSource;
        }
        let mac_word = mac_to_u64(mac);
        if let Some(index) = self.find(vni, mac_word) {
            let slot = self.slots[index];
            if slot.tagged_mac & STATIC != 0 {
                let configured = self.destination_of(&slot);
                if configured != dest {
                    self.counters.static_conflicts += 1;
                }
                return LearnOutcome::StaticKept { configured };
            }
            let deadline = self.deadline_from(now);
            if self.same_destination(&slot, &dest) {
                self.deadlines[index] = deadline;
                self.counters.refreshed += 1;
                return LearnOutcome::Refreshed;
            }
            if slot.tagged_mac & REMOTE == 0 && matches!(dest, Destination::Remote(_)) {
                self.counters.local_conflicts += 1;
                return LearnOutcome::LocalKept { port: slot.dest };
            }
            let from = self.destination_of(&slot);
            self.release_dest(&slot);
            let (flags, dest_word) = self.intern_dest(dest);
            let slot = &mut self.slots[index];
            slot.tagged_mac = mac_word | OCCUPIED | flags;
            slot.dest = dest_word;
            self.deadlines[index] = deadline;
            self.counters.moves += 1;
            return LearnOutcome::Moved { from };
        }
        let default_limit = self.config.default_learn_limit;
        let state = self.vnis.entry(vni).or_default();
        if state.learned >= state.limit.unwrap_or(default_limit) {
            self.counters.limit_drops += 1;
            return LearnOutcome::LimitReached;
        }
        state.learned += 1;
        let deadline = self.deadline_from(now);
        self.insert_new(vni, mac_word, dest, 0, deadline);
        self.counters.learned += 1;
        LearnOutcome::Learned
    }

    /// Adds or replaces a static entry, returning the destination it replaced (learned
    /// or static). Static entries do not count against the learn limit.
    pub fn insert_static(
        &mut self,
        vni: u32,
        mac: &MacAddr,
        dest: Destination,
    ) -> Option<Destination> {
        let mac_word = mac_to_u64(mac);
        let previous = self.remove(vni, mac);
        self.insert_new(vni, mac_word, dest, STATIC, STATIC_MARK);
        previous
    }

    /// Removes the entry (learned or static) for `mac` in `vni`, returning its destination.
    pub fn remove(&mut self, vni: u32, mac: &MacAddr) -> Option<Destination> {
        let index = self.find(vni, mac_to_u64(mac))?;
        let slot = self.slots[index];
        let dest = self.destination_of(&slot);
        self.vacate(index);
        Some(dest)
    }

    /// True when the entry for `mac` in `vni` exists and is static.
    pub fn is_static(&self, vni: u32, mac: &MacAddr) -> bool {
        self.find(vni, mac_to_u64(mac))
            .is_some_and(|index| self.slots[index].tagged_mac & STATIC != 0)
    }

    #[inline(always)]
    fn deadline_from(&self, now: u64) -> u64 {
        now.saturating_add(self.config.max_age).min(LATEST_DEADLINE)
    }

    /// Removes learned entries last seen `max_age` or longer before `now`; returns how many.
    ///
    /// Two passes: a branch-free scan of the deadline array into a bitmap of expired
    /// slots, then removal of just those, back to front. Which entries expire is random,
    /// so a single pass that branches per slot mispredicts on about every other entry.
    pub fn age(&mut self, now: u64) -> usize {
        // Marks are above LATEST_DEADLINE, so this one compare skips empty, tombstone and
        // static slots.
        let now = now.min(LATEST_DEADLINE);
        let mut expired = std::mem::take(&mut self.expired_scratch);
        expired.clear();
        expired.extend(self.deadlines.chunks(64).map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .fold(0u64, |bits, (bit, &deadline)| {
                    bits | (u64::from(deadline <= now) << bit)
                })
        }));
        let mut forgotten = ForgottenCounts::default();
        let mut removed = 0;
        for (word_index, &word) in expired.iter().enumerate().rev() {
            let mut bits = word;
            while bits != 0 {
                let bit = 63 - bits.leading_zeros() as usize;
                bits &= !(1u64 << bit);
                let index = word_index * 64 + bit;
                let slot = self.vacate_slot(index);
                forgotten.add(self, slot.vni);
                removed += 1;
                // Tombstones right in front of an empty slot are on no probe path: empty
                // them (this one and any run before it).
                let mut at = index;
                while self.deadlines[(at + 1) & self.mask] == EMPTY_MARK
                    && self.deadlines[at] == TOMBSTONE_MARK
                {
                    self.empty_tombstone(at);
                    at = at.wrapping_sub(1) & self.mask;
                }
            }
        }
        forgotten.flush(self);
        self.expired_scratch = expired;
        self.counters.aged_out += removed as u64;
        self.maybe_rehash();
        removed
    }

    /// Removes every entry (learned and static) of `vni`; its flood list and limit stay.
    pub fn flush_vni(&mut self, vni: u32) -> usize {
        self.sweep(|slot, deadline| deadline <= STATIC_MARK && slot.vni == vni)
    }

    /// Removes the live entries `doomed(slot, deadline)` selects (it must reject the
    /// empty and tombstone marks), in one pass from back to front starting just before an
    /// empty slot: a slot freed (or a tombstone met) right in front of an empty slot is on
    /// no probe path, so it becomes empty rather than a tombstone.
    fn sweep(&mut self, mut doomed: impl FnMut(&Slot, u64) -> bool) -> usize {
        let capacity = self.slots.len();
        // The load bound keeps an empty slot; without one, fall back to tombstones only.
        let start = self.deadlines.iter().position(|&mark| mark == EMPTY_MARK);
        let mut next_is_empty = start.is_some();
        let start = start.unwrap_or(0);
        let mut removed = 0;
        let mut forgotten = ForgottenCounts::default();
        let order = (0..start).rev().chain((start..capacity).rev());
        for index in order {
            let deadline = self.deadlines[index];
            if (deadline == TOMBSTONE_MARK) & next_is_empty {
                self.empty_tombstone(index);
            } else if doomed(&self.slots[index], deadline) {
                let slot = self.vacate_slot(index);
                if slot.tagged_mac & STATIC == 0 {
                    forgotten.add(self, slot.vni);
                }
                if next_is_empty {
                    self.empty_tombstone(index);
                }
                removed += 1;
            }
            next_is_empty = self.deadlines[index] == EMPTY_MARK;
        }
        forgotten.flush(self);
        self.maybe_rehash();
        removed
    }

    fn empty_tombstone(&mut self, index: usize) {
        self.slots[index] = Slot::default();
        self.deadlines[index] = EMPTY_MARK;
        self.tombstones -= 1;
    }

    /// Every entry as `(vni, mac, destination, is_static)`, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (u32, MacAddr, Destination, bool)> + '_ {
        self.slots.iter().filter(|slot| slot.is_live()).map(|slot| {
            (
                slot.vni,
                u64_to_mac(slot.tagged_mac & MAC_MASK),
                self.destination_of(slot),
                slot.tagged_mac & STATIC != 0,
            )
        })
    }

    /// Sets the limit of learned entries for `vni` (entries above it are kept; only new
    /// learning stops).
    pub fn set_learn_limit(&mut self, vni: u32, limit: u32) {
        self.vnis.entry(vni).or_default().limit = Some(limit);
    }

    /// Learned entries currently held for `vni`.
    pub fn learned_in(&self, vni: u32) -> u32 {
        self.vnis.get(&vni).map_or(0, |state| state.learned)
    }

    /// Adds a remote VTEP to the flood list of `vni`; false if it was already there.
    pub fn add_flood(&mut self, vni: u32, vtep: IpAddr) -> bool {
        let flood = &mut self.vnis.entry(vni).or_default().flood;
        if flood.contains(&vtep) {
            return false;
        }
        flood.push(vtep);
        true
    }

    /// Removes a remote VTEP from the flood list of `vni`; false if it was not there.
    pub fn remove_flood(&mut self, vni: u32, vtep: IpAddr) -> bool {
        let Some(state) = self.vnis.get_mut(&vni) else {
            return false;
        };
        let before = state.flood.len();
        state.flood.retain(|addr| *addr != vtep);
        state.flood.len() != before
    }

    /// The remote VTEPs that get a copy of BUM frames of `vni` (empty if none).
    #[inline]
    pub fn flood_list(&self, vni: u32) -> &[IpAddr] {
        self.vnis
            .get(&vni)
            .map_or(&[], |state| state.flood.as_slice())
    }

    fn intern_dest(&mut self, dest: Destination) -> (u64, u32) {
        match dest {
            Destination::Port(port) => (0, port),
            Destination::Remote(addr) => {
                let index = match self.vtep_index.get(&addr) {
                    Some(&index) => index,
                    None => {
                        let index = match self.free_vteps.pop() {
                            Some(index) => {
                                self.vteps[index as usize] = (addr, 0);
                                index
                            }
                            None => {
                                self.vteps.push((addr, 0));
                                (self.vteps.len() - 1) as u32
                            }
                        };
                        self.vtep_index.insert(addr, index);
                        index
                    }
                };
                self.vteps[index as usize].1 += 1;
                (REMOTE, index)
            }
        }
    }

    fn release_dest(&mut self, slot: &Slot) {
        if slot.tagged_mac & REMOTE == 0 {
            return;
        }
        let entry = &mut self.vteps[slot.dest as usize];
        entry.1 -= 1;
        if entry.1 == 0 {
            let addr = entry.0;
            self.vtep_index.remove(&addr);
            self.free_vteps.push(slot.dest);
        }
    }

    fn insert_new(
        &mut self,
        vni: u32,
        mac_word: u64,
        dest: Destination,
        flags: u64,
        deadline: u64,
    ) {
        self.reserve_one();
        let (dest_flags, dest_word) = self.intern_dest(dest);
        let index = self.free_slot_for(vni, mac_word);
        if self.slots[index].tagged_mac & TOMBSTONE != 0 {
            self.tombstones -= 1;
        }
        self.slots[index] = Slot {
            tagged_mac: mac_word | OCCUPIED | flags | dest_flags,
            vni,
            dest: dest_word,
        };
        self.deadlines[index] = deadline;
        self.live += 1;
    }

    /// First empty or tombstone slot on the key's probe path (the key is known absent).
    fn free_slot_for(&self, vni: u32, mac_word: u64) -> usize {
        let mut index = self.hash(vni, mac_word) & self.mask;
        while self.slots[index].is_live() {
            index = (index + 1) & self.mask;
        }
        index
    }

    fn vacate(&mut self, index: usize) {
        self.vacate_without_rehash(index);
        self.maybe_rehash();
    }

    fn vacate_without_rehash(&mut self, index: usize) {
        let slot = self.vacate_slot(index);
        if slot.tagged_mac & STATIC == 0 {
            self.forget_learned(slot.vni, 1);
        }
    }

    fn forget_learned(&mut self, vni: u32, count: u32) {
        if let Some(state) = self.vnis.get_mut(&vni) {
            state.learned = state.learned.saturating_sub(count);
        }
    }

    /// Turns a live slot into a tombstone and returns what it held; the per-VNI learned
    /// count is the caller's to update.
    fn vacate_slot(&mut self, index: usize) -> Slot {
        let slot = self.slots[index];
        self.release_dest(&slot);
        // A tombstone keeps probe chains through this slot intact.
        self.slots[index] = Slot {
            tagged_mac: TOMBSTONE,
            ..Slot::default()
        };
        self.deadlines[index] = TOMBSTONE_MARK;
        self.live -= 1;
        self.tombstones += 1;
        slot
    }

    /// Grows (or cleans) the table before an insertion would push the load past 1/2 live
    /// or 3/4 including tombstones.
    fn reserve_one(&mut self) {
        let capacity = self.slots.len();
        if (self.live + 1) * 2 > capacity {
            self.rebuild(capacity * 2);
        } else if (self.live + self.tombstones + 1) * 4 > capacity * 3 {
            self.rebuild(capacity);
        }
    }

    /// Shrinks the table once it is mostly unused (after mass aging or a flush), so memory
    /// follows the number of entries. Tombstones alone are left to `reserve_one`: up to
    /// 3/4 occupancy they cost lookups no more than live entries do.
    fn maybe_rehash(&mut self) {
        if self.slots.len() > MIN_CAPACITY && self.live * 8 < self.slots.len() {
            self.rebuild(Self::capacity_for(self.live));
        }
    }

    fn rebuild(&mut self, capacity: usize) {
        let old_slots = std::mem::replace(&mut self.slots, vec![Slot::default(); capacity]);
        let old_deadlines = std::mem::replace(&mut self.deadlines, vec![EMPTY_MARK; capacity]);
        self.mask = capacity - 1;
        self.tombstones = 0;
        for (slot, deadline) in old_slots.into_iter().zip(old_deadlines) {
            if slot.is_live() {
                let index = self.free_slot_for(slot.vni, slot.tagged_mac & MAC_MASK);
                self.slots[index] = slot;
                self.deadlines[index] = deadline;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn mac(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        [0x02, 0x42, b[0], b[1], b[2], b[3]]
    }

    fn vtep(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))
    }

    fn config(max_age: u64, limit: u32) -> FdbConfig {
        FdbConfig {
            max_age,
            default_learn_limit: limit,
        }
    }

    #[test]
    fn learn_then_lookup_finds_port_and_remote() {
        let mut fdb = Fdb::default();
        assert_eq!(
            fdb.learn(1, &mac(1), Destination::Port(7), 0),
            LearnOutcome::Learned
        );
        assert_eq!(
            fdb.learn(1, &mac(2), Destination::Remote(vtep(2)), 0),
            LearnOutcome::Learned
        );
        assert_eq!(fdb.lookup(1, &mac(1)), Some(Destination::Port(7)));
        assert_eq!(fdb.lookup(1, &mac(2)), Some(Destination::Remote(vtep(2))));
        // Same MAC in another VNI is another key.
        assert_eq!(fdb.lookup(2, &mac(1)), None);
        assert_eq!(fdb.len(), 2);
    }

    #[test]
    fn relearning_refreshes_and_delays_aging() {
        let mut fdb = Fdb::new(config(100, 10));
        fdb.learn(1, &mac(1), Destination::Port(1), 0);
        fdb.learn(1, &mac(2), Destination::Port(1), 0);
        assert_eq!(
            fdb.learn(1, &mac(1), Destination::Port(1), 60),
            LearnOutcome::Refreshed
        );
        assert_eq!(fdb.age(120), 1);
        assert_eq!(fdb.lookup(1, &mac(1)), Some(Destination::Port(1)));
        assert_eq!(fdb.lookup(1, &mac(2)), None);
        assert_eq!(fdb.age(160), 1);
        assert!(fdb.is_empty());
        assert_eq!(fdb.counters().aged_out, 2);
        assert_eq!(fdb.learned_in(1), 0);
    }

    #[test]
    fn move_is_reported_with_previous_destination() {
        let mut fdb = Fdb::default();
        fdb.learn(5, &mac(9), Destination::Remote(vtep(3)), 0);
        let outcome = fdb.learn(5, &mac(9), Destination::Port(4), 1);
        assert_eq!(
            outcome,
            LearnOutcome::Moved {
                from: Destination::Remote(vtep(3))
            }
        );
        let outcome = fdb.learn(5, &mac(9), Destination::Port(1), 2);
        assert_eq!(
            outcome,
            LearnOutcome::Moved {
                from: Destination::Port(4)
            }
        );
        assert_eq!(fdb.counters().moves, 2);
        assert_eq!(fdb.lookup(5, &mac(9)), Some(Destination::Port(1)));
    }

    #[test]
    fn a_remote_vtep_never_takes_a_local_mac_over() {
        let mut fdb = Fdb::default();
        fdb.learn(5, &mac(9), Destination::Port(1), 0);
        let outcome = fdb.learn(5, &mac(9), Destination::Remote(vtep(3)), 1);
        assert_eq!(outcome, LearnOutcome::LocalKept { port: 1 });
        assert_eq!(fdb.lookup(5, &mac(9)), Some(Destination::Port(1)));
        assert_eq!(fdb.counters().local_conflicts, 1);
        assert_eq!(fdb.counters().moves, 0);
        // Once the local entry ages out, the remote one is learned.
        fdb.age(u64::MAX);
        fdb.learn(5, &mac(9), Destination::Remote(vtep(3)), 2);
        assert_eq!(fdb.lookup(5, &mac(9)), Some(Destination::Remote(vtep(3))));
    }

    #[test]
    fn static_entries_are_neither_overwritten_nor_aged() {
        let mut fdb = Fdb::new(config(10, 10));
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert_eq!(fdb.insert_static(1, &mac(1), Destination::Remote(v6)), None);
        let outcome = fdb.learn(1, &mac(1), Destination::Port(3), 5);
        assert_eq!(
            outcome,
            LearnOutcome::StaticKept {
                configured: Destination::Remote(v6)
            }
        );
        assert_eq!(fdb.counters().static_conflicts, 1);
        assert_eq!(fdb.age(1_000), 0);
        assert!(fdb.is_static(1, &mac(1)));
        assert_eq!(fdb.lookup(1, &mac(1)), Some(Destination::Remote(v6)));
    }

    #[test]
    fn static_replaces_learned_and_frees_its_learn_quota() {
        let mut fdb = Fdb::new(config(10, 1));
        fdb.learn(1, &mac(1), Destination::Port(1), 0);
        assert_eq!(
            fdb.learn(1, &mac(2), Destination::Port(1), 0),
            LearnOutcome::LimitReached
        );
        assert_eq!(
            fdb.insert_static(1, &mac(1), Destination::Port(2)),
            Some(Destination::Port(1))
        );
        assert_eq!(
            fdb.learn(1, &mac(2), Destination::Port(1), 0),
            LearnOutcome::Learned
        );
    }

    #[test]
    fn learn_limit_is_per_vni_and_still_refreshes_known_macs() {
        let mut fdb = Fdb::new(config(1_000, 100));
        fdb.set_learn_limit(1, 3);
        for n in 0..3 {
            assert_eq!(
                fdb.learn(1, &mac(n), Destination::Port(1), 0),
                LearnOutcome::Learned
            );
        }
        assert_eq!(
            fdb.learn(1, &mac(99), Destination::Port(1), 0),
            LearnOutcome::LimitReached
        );
        assert_eq!(
            fdb.learn(1, &mac(0), Destination::Port(1), 5),
            LearnOutcome::Refreshed
        );
        assert_eq!(
            fdb.learn(2, &mac(99), Destination::Port(1), 0),
            LearnOutcome::Learned
        );
        assert_eq!(fdb.counters().limit_drops, 1);
        assert_eq!(fdb.learned_in(1), 3);
    }

    #[test]
    fn forged_source_flood_is_bounded_by_the_limit() {
        let mut fdb = Fdb::new(config(1_000, 1_000));
        for n in 0..100_000 {
            fdb.learn(42, &mac(n), Destination::Port(1), 0);
        }
        assert_eq!(fdb.len(), 1_000);
        assert_eq!(fdb.counters().limit_drops, 99_000);
        assert!(
            fdb.slots.len() <= 4_096,
            "table grew to {}",
            fdb.slots.len()
        );
    }

    #[test]
    fn group_and_zero_sources_are_not_learned() {
        let mut fdb = Fdb::default();
        let broadcast = [0xff; 6];
        let multicast = [0x01, 0x00, 0x5e, 0, 0, 1];
        for source in [broadcast, multicast, [0; 6]] {
            assert_eq!(
                fdb.learn(1, &source, Destination::Port(1), 0),
                LearnOutcome::InvalidSource
            );
        }
        assert!(fdb.is_empty());
        assert_eq!(fdb.counters().invalid_sources, 3);
    }

    #[test]
    fn flood_list_is_per_vni_without_duplicates() {
        let mut fdb = Fdb::default();
        assert!(fdb.add_flood(1, vtep(1)));
        assert!(fdb.add_flood(1, vtep(2)));
        assert!(!fdb.add_flood(1, vtep(1)));
        assert!(fdb.add_flood(2, vtep(3)));
        assert_eq!(fdb.flood_list(1), &[vtep(1), vtep(2)]);
        assert!(fdb.remove_flood(1, vtep(1)));
        assert!(!fdb.remove_flood(1, vtep(1)));
        assert_eq!(fdb.flood_list(1), &[vtep(2)]);
        assert_eq!(fdb.flood_list(9), &[] as &[IpAddr]);
    }

    #[test]
    fn remote_addresses_are_released_when_unused() {
        let mut fdb = Fdb::default();
        for n in 0..50 {
            fdb.learn(1, &mac(n), Destination::Remote(vtep(n as u8)), 0);
        }
        for n in 0..50 {
            fdb.remove(1, &mac(n));
        }
        assert!(fdb.vtep_index.is_empty());
        fdb.learn(1, &mac(1), Destination::Remote(vtep(200)), 0);
        assert_eq!(fdb.vteps.len(), 50, "freed VTEP slots are reused");
        assert_eq!(fdb.lookup(1, &mac(1)), Some(Destination::Remote(vtep(200))));
    }

    #[test]
    fn survives_growth_churn_and_flush() {
        let mut fdb = Fdb::new(config(10, u32::MAX));
        for round in 0..5u64 {
            for n in 0..20_000 {
                fdb.learn(n % 7, &mac(n), Destination::Port(n), round * 10);
            }
            assert_eq!(fdb.len(), 20_000);
            for n in (0..20_000).step_by(997) {
                assert_eq!(fdb.lookup(n % 7, &mac(n)), Some(Destination::Port(n)));
            }
            assert_eq!(fdb.age(round * 10 + 10), 20_000);
            assert!(fdb.is_empty());
        }
        for n in 0..1_000 {
            fdb.learn(n % 2, &mac(n), Destination::Port(1), 0);
        }
        assert_eq!(fdb.flush_vni(0), 500);
        assert_eq!(fdb.entries().count(), 500);
        assert!(fdb.entries().all(|(vni, ..)| vni == 1));
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Learn(u8, u8, u32),
            Static(u8, u8, u32),
            Remove(u8, u8),
            Age,
            Flush(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => (0..3u8, 0..64u8, 0..4u32).prop_map(|(v, m, p)| Op::Learn(v, m, p)),
                1 => (0..3u8, 0..64u8, 0..4u32).prop_map(|(v, m, p)| Op::Static(v, m, p)),
                2 => (0..3u8, 0..64u8).prop_map(|(v, m)| Op::Remove(v, m)),
                1 => Just(Op::Age),
                1 => (0..3u8).prop_map(Op::Flush),
            ]
        }

        proptest! {
            /// The table behaves like a plain map with the documented rules, through
            /// growth, tombstones, sweeps and shrinking.
            #[test]
            fn matches_a_simple_model(ops in proptest::collection::vec(op(), 1..400)) {
                let max_age = 5;
                let mut fdb = Fdb::new(config(max_age, 40));
                // (vni, mac) -> (port, last_seen or None when static)
                let mut model: HashMap<(u32, u32), (u32, Option<u64>)> = HashMap::new();
                for (now, op) in ops.into_iter().enumerate() {
                    let now = now as u64;
                    match op {
                        Op::Learn(v, m, p) => {
                            let key = (u32::from(v), u32::from(m));
                            let in_vni = model.iter().filter(|(k, e)| k.0 == key.0 && e.1.is_some()).count();
                            match model.get(&key) {
                                Some((_, None)) => {}
                                Some(_) => { model.insert(key, (p, Some(now))); }
                                None if in_vni < 40 => { model.insert(key, (p, Some(now))); }
                                None => {}
                            }
                            fdb.learn(key.0, &mac(key.1), Destination::Port(p), now);
                        }
                        Op::Static(v, m, p) => {
                            let key = (u32::from(v), u32::from(m));
                            model.insert(key, (p, None));
                            fdb.insert_static(key.0, &mac(key.1), Destination::Port(p));
                        }
                        Op::Remove(v, m) => {
                            let key = (u32::from(v), u32::from(m));
                            let expected = model.remove(&key).map(|e| Destination::Port(e.0));
                            prop_assert_eq!(fdb.remove(key.0, &mac(key.1)), expected);
                        }
                        Op::Age => {
                            let before = model.len();
                            model.retain(|_, e| e.1.is_none_or(|seen| now - seen < max_age));
                            prop_assert_eq!(fdb.age(now), before - model.len());
                        }
                        Op::Flush(v) => {
                            let before = model.len();
                            model.retain(|k, _| k.0 != u32::from(v));
                            prop_assert_eq!(fdb.flush_vni(u32::from(v)), before - model.len());
                        }
                    }
                    prop_assert_eq!(fdb.len(), model.len());
                }
                for v in 0..3u32 {
                    for m in 0..64u32 {
                        let expected = model.get(&(v, m)).map(|e| Destination::Port(e.0));
                        prop_assert_eq!(fdb.lookup(v, &mac(m)), expected);
                    }
                }
            }
        }
    }
}
