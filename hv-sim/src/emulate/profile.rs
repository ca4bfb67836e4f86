//! Where [`super::emulate`]'s time goes: exclusive time per phase (fetch,
//! decode, segmentation, guest-memory accesses, execute, re-check,
//! commit), for the side-by-side accounting of issue 11.
//!
//! Off by default: a phase boundary then costs one thread-local flag read.
//! [`measure`] turns it on for one closure on this thread and returns the
//! [`Phases`]; phases nest (a memory access inside execute is counted as
//! memory, not execute), each boundary reading the time-stamp counter
//! once (converted with a rate calibrated once per process over 10 ms), so
//! the profile adds about one `rdtsc` and a thread-local access per
//! boundary to what it measures. Memory accesses are timed by wrapping the guest memory in
//! [`Profiled`] (the page walk and the copy together).

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{Access, GuestMemory, PageFault};

/// A phase of an emulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Outside any phase (the caller, glue).
    Other,
    /// Instruction fetch: linear addresses of the bytes (CS checks).
    Fetch,
    /// iced-x86 decoding.
    Decode,
    /// Segmentation of the memory operand ([`super::segment::linear`]).
    Segmentation,
    /// Guest-memory accesses: page walks and copies ([`Profiled`]).
    Memory,
    /// The instruction's checks and staging.
    Execute,
    /// The self-modifying-code re-check: the second fetch and compare.
    Recheck,
    /// Commit: the staged write and the new registers.
    Commit,
}

impl Phase {
    /// All phases, in report order.
    pub const ALL: [Phase; 8] = [
        Phase::Fetch,
        Phase::Decode,
        Phase::Segmentation,
        Phase::Memory,
        Phase::Execute,
        Phase::Recheck,
        Phase::Commit,
        Phase::Other,
    ];

    /// The phase's name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Other => "other",
            Phase::Fetch => "fetch",
            Phase::Decode => "decode",
            Phase::Segmentation => "segmentation",
            Phase::Memory => "memory (page walk + copy)",
            Phase::Execute => "execute (checks, staging)",
            Phase::Recheck => "re-check (SMC guard)",
            Phase::Commit => "commit",
        }
    }
}

/// Exclusive time and entries per phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phases {
    time: [Duration; 8],
    count: [u64; 8],
}

impl Phases {
    /// Time spent in `p` (not in a phase nested in it).
    pub fn time(&self, p: Phase) -> Duration {
        self.time[p as usize]
    }

    /// Times `p` was entered.
    pub fn count(&self, p: Phase) -> u64 {
        self.count[p as usize]
    }

    /// All phases' time.
    pub fn total(&self) -> Duration {
        self.time.iter().sum()
    }

    /// Add `other` in.
    pub fn add(&mut self, other: &Phases) {
        for k in 0..8 {
            self.time[k] += other.time[k];
            self.count[k] += other.count[k];
        }
    }
}

struct State {
    cycles: [u64; 8],
    count: [u64; 8],
    current: Phase,
    since: u64,
}

/// A cycle counter: the TSC on x86-64, else nanoseconds.
fn now() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no memory effects.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static T0: OnceLock<Instant> = OnceLock::new();
        T0.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// The host's TSC rate in Hz (the profiler's ticks per second), measured once
/// per process over 10 ms. The first call sleeps: call it before starting a
/// clock that [`measure`] runs inside (the trap personality does so before
/// its VM runs).
pub fn tsc_hz() -> f64 {
    hz()
}

fn hz() -> f64 {
    static HZ: OnceLock<f64> = OnceLock::new();
    *HZ.get_or_init(|| {
        let (t, c) = (Instant::now(), now());
        std::thread::sleep(Duration::from_millis(10));
        (now().wrapping_sub(c) as f64 / t.elapsed().as_secs_f64()).max(1.0)
    })
}

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static STATE: Cell<Option<State>> = const { Cell::new(None) };
}

fn switch(to: Phase, entering: bool) -> Phase {
    STATE.with(|s| {
        let Some(mut st) = s.take() else {
            return to;
        };
        let now = now();
        st.cycles[st.current as usize] += now.wrapping_sub(st.since);
        if entering {
            st.count[to as usize] += 1;
        }
        let prev = std::mem::replace(&mut st.current, to);
        st.since = now;
        s.set(Some(st));
        prev
    })
}

/// Leaves its phase when dropped.
pub struct Guard(Option<Phase>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(prev) = self.0 {
            switch(prev, false);
        }
    }
}

/// Enter `p` until the guard drops (nothing when profiling is off).
pub fn enter(p: Phase) -> Guard {
    if !ON.with(Cell::get) {
        return Guard(None);
    }
    Guard(Some(switch(p, true)))
}

/// Turns this thread's profiling off and drops its state when dropped.
struct Session;

impl Drop for Session {
    fn drop(&mut self) {
        ON.with(|o| o.set(false));
        STATE.with(|s| s.set(None));
    }
}

/// Run `f` with profiling on for this thread; its result and the phases.
/// Nested calls profile into the outer one. If `f` panics, profiling is
/// off again for this thread when the panic leaves `measure`.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Phases) {
    if ON.with(Cell::get) {
        return (f(), Phases::default());
    }
    let hz = hz();
    // Profiling is off again and the state gone when this drops, also when
    // `f` unwinds (a caught panic must not leave this thread profiling).
    let session = Session;
    ON.with(|o| o.set(true));
    STATE.with(|s| {
        s.set(Some(State {
            cycles: [0; 8],
            count: [0; 8],
            current: Phase::Other,
            since: now(),
        }))
    });
    let r = f();
    switch(Phase::Other, false);
    let st = STATE.with(|s| s.take());
    drop(session);
    let mut phases = Phases::default();
    if let Some(st) = st {
        for k in 0..8 {
            phases.time[k] = Duration::from_secs_f64(st.cycles[k] as f64 / hz);
            phases.count[k] = st.count[k];
        }
    }
    (r, phases)
}

/// A guest memory whose accesses count as [`Phase::Memory`].
pub struct Profiled<'a, M: GuestMemory + ?Sized>(pub &'a M);

impl<M: GuestMemory + ?Sized> GuestMemory for Profiled<'_, M> {
    fn read(&self, addr: u64, buf: &mut [u8], access: Access) -> Result<(), PageFault> {
        let _p = enter(Phase::Memory);
        self.0.read(addr, buf, access)
    }

    fn write(&self, addr: u64, data: &[u8], access: Access) -> Result<(), PageFault> {
        let _p = enter(Phase::Memory);
        self.0.write(addr, data, access)
    }

    fn without_writers<R>(&self, addr: u64, len: usize, f: impl FnOnce() -> R) -> R {
        self.0.without_writers(addr, len, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::mock::{MockCpu, MockMemory};
    use crate::emulate::{Outcome, emulate};

    #[test]
    fn phases_cover_an_emulation_and_cost_nothing_when_off() {
        let mem = MockMemory::quiet();
        mem.map(0x1000, false).map(0x2000, true);
        // sgdt [rip+0xff9] -> 0x2000.
        mem.poke(0x1000, &[0x0f, 0x01, 0x05, 0xf9, 0x0f, 0, 0]);
        let mut cpu = MockCpu {
            rip: 0x1000,
            ..MockCpu::default()
        };
        let (o, p) = measure(|| emulate(&mut cpu, &Profiled(&mem)));
        assert!(matches!(o, Outcome::Emulated { .. }), "{o:?}");
        for ph in [
            Phase::Fetch,
            Phase::Decode,
            Phase::Memory,
            Phase::Execute,
            Phase::Recheck,
            Phase::Commit,
        ] {
            assert!(p.count(ph) >= 1, "{ph:?}: {p:?}");
        }
        // Two fetches (and the re-check's), one 10-byte store.
        assert!(p.count(Phase::Memory) >= 3);
        assert!(p.total() > Duration::ZERO);
        // Off: nothing recorded, no state left behind.
        let _ = emulate(&mut cpu, &Profiled(&mem));
        assert!(STATE.with(|s| s.take()).is_none());
    }

    #[test]
    fn a_panic_in_measure_leaves_profiling_off() {
        let r = std::panic::catch_unwind(|| {
            measure(|| {
                let _g = enter(Phase::Decode);
                assert!(ON.with(Cell::get));
                panic!("inside measure");
            })
        });
        assert!(r.is_err());
        assert!(!ON.with(Cell::get), "profiling left on after a panic");
        assert!(STATE.with(|s| s.take()).is_none(), "state left behind");
        // Off: a phase boundary records nothing; a new measure starts clean.
        drop(enter(Phase::Fetch));
        assert!(STATE.with(|s| s.take()).is_none());
        let ((), p) = measure(|| drop(enter(Phase::Fetch)));
        assert_eq!(p.count(Phase::Fetch), 1);
        assert_eq!(p.count(Phase::Decode), 0);
    }
}
