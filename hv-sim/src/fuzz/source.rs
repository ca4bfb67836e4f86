//! Where a case's choices come from: the [`Source`] word stream over
//! [`SplitMix64`], and the dictionaries of boundary values, selectors and
//! shaped descriptors the targets draw from.

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fast, well-distributed
/// 64-bit generator; a run depends only on its seed.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next word.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Where a case's choices come from: recorded words first, then the
/// generator. Every word handed out is recorded, so the case can be
/// replayed exactly.
pub struct Source {
    prefix: Vec<u64>,
    pos: usize,
    rng: SplitMix64,
    record: Vec<u64>,
}

impl Source {
    /// A source that replays `prefix`, then draws from `rng`.
    pub fn new(prefix: Vec<u64>, rng: SplitMix64) -> Source {
        Source {
            prefix,
            pos: 0,
            rng,
            record: Vec::new(),
        }
    }

    /// A source that replays `words` and then yields zeros (a replayed case
    /// that asks for more words than were recorded ends its loops there).
    pub fn replay(words: &[u64]) -> Source {
        Source::new(words.to_vec(), SplitMix64::new(0))
    }

    /// The next word.
    pub fn word(&mut self) -> u64 {
        let w = match self.prefix.get(self.pos) {
            Some(&w) => w,
            None => self.rng.next_u64(),
        };
        self.pos += 1;
        self.record.push(w);
        w
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        let w = self.word();
        w.checked_rem(n).unwrap_or(0)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// One of `xs` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// Index of a weighted choice.
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if x < w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    /// The words drawn so far.
    pub fn recorded(&self) -> &[u64] {
        &self.record
    }
}

/// Boundary values every target mixes into its integers.
pub const BOUNDARIES: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    0xf,
    0x10,
    0xff,
    0x100,
    0xfff,
    0x1000,
    0x1001,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_f000,
    0xffff_fff8,
    0xffff_ffff,
    0x1_0000_0000,
    0x0000_7fff_ffff_f000,
    0x0000_7fff_ffff_ffff,
    0x0000_8000_0000_0000,
    0xffff_7fff_ffff_ffff,
    0xffff_8000_0000_0000,
    0xffff_8800_0000_0000,
    0xffff_ffff_ffff_f000,
    0xffff_ffff_ffff_fff8,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

/// Segment selectors worth trying: Xen's flat selectors (0xe008 ring-0
/// code, 0xe019 pv32 kernel CS, 0xe02b/0xe033 user CS/DS, 0xe021/0xe02b
/// pv32 kernel DS/user CS …), the guest's usual ones, null and LDT ones.
pub const SELECTORS: &[u64] = &[
    0, 3, 4, 7, 8, 0xb, 0x10, 0x13, 0x18, 0x1b, 0x23, 0x2b, 0x33, 0x38, 0x40, 0x48, 0x50, 0x60,
    0x61, 0x69, 0x7b, 0xe008, 0xe010, 0xe019, 0xe021, 0xe023, 0xe02b, 0xe033, 0xe039, 0xfff8,
    0xfffb, 0xffff,
];

/// A selector from [`SELECTORS`], or any 16-bit value.
pub fn selector(s: &mut Source) -> u64 {
    if s.chance(3, 4) {
        s.pick(SELECTORS)
    } else {
        s.below(0x1_0000)
    }
}

/// An integer: a boundary, a small number, or any word.
pub fn int(s: &mut Source) -> u64 {
    match s.below(4) {
        0 | 1 => s.pick(BOUNDARIES),
        2 => s.below(64),
        _ => s.word(),
    }
}

/// An 8-byte descriptor shaped by the rules `check_descriptor` and the VMI
/// policy apply: code/data with every DPL and L/D combination, each system
/// type (LDT, TSS, call/interrupt/trap/task gates) with hostile selectors
/// and reserved bits, not-present ones, and arbitrary words.
pub fn descriptor(s: &mut Source) -> u64 {
    let base_limit = |s: &mut Source| -> u64 {
        let bits = s.word();
        // Keep only base/limit/G/AVL-ish bits; type, S, DPL, P, L, D set below.
        bits & !((0xFF << 40) | (0xF << 52))
    };
    match s.below(10) {
        // Code/data: P, DPL, type, S=1, L/D/G.
        0..=3 => {
            let typ = s.below(16);
            let dpl = s.below(4);
            let p = u64::from(s.chance(7, 8));
            let flags = s.below(16); // G, D/B, L, AVL
            let bl = if s.chance(1, 2) {
                0x0000_0000_0000_ffff | 0xF << 48
            } else {
                base_limit(s)
            };
            bl | typ << 40 | 1 << 44 | dpl << 45 | p << 47 | flags << 52
        }
        // System descriptors and gates.
        4..=6 => {
            let typ = s.pick(&[
                0u64, 1, 2, 3, 4, 5, 6, 7, 9, 0xb, 0xc, 0xe, 0xf, 8, 0xa, 0xd,
            ]);
            let dpl = s.below(4);
            let p = u64::from(s.chance(7, 8));
            let sel = selector(s);
            let off = if s.chance(1, 2) {
                s.below(0x1_0000)
            } else {
                s.word()
            };
            let params = if s.chance(3, 4) { 0 } else { s.below(256) };
            (off & 0xffff)
                | sel << 16
                | params << 32
                | typ << 40
                | dpl << 45
                | p << 47
                | ((off >> 16) & 0xffff) << 48
        }
        7 => 0,
        8 => s.pick(&[
            0x00af_9b00_0000_ffff,
            0x00cf_9b00_0000_ffff,
            0x00cf_9300_0000_ffff,
            0x00af_fb00_0000_ffff,
            0x00cf_fb00_0000_ffff,
            0x00cf_f300_0000_ffff,
            0x00af_bb00_0000_ffff,
            0x00cf_bb00_0000_ffff,
            0x0000_8900_0000_0067,
            0x0000_8200_0000_ffff,
            0x0000_8c00_e008_1000,
            0x0000_ec00_e033_1000,
            0x0000_8e00_0010_1000,
            0x0000_ee00_e019_1000,
            0x0000_8500_0010_0000,
            0x0000_0200_0000_0000,
            0x0020_9800_0000_0000,
        ]),
        _ => s.word(),
    }
}
