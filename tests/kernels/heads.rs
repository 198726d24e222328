//! `kernels/heads.cu` against `heads::cpu`: permutations times a factor, so exactly.

use attnrt::gpu::{self, testing::gpu_or_skip};
use attnrt::kernels::heads::cpu::{heads_from_rows, heads_to_rows};
use attnrt::kernels::heads::{Heads, HeadsKernels, SlotOrder};
use rand::seq::SliceRandom;

use crate::{down, poisoned, random, rng, to_bits, up};

#[test]
fn heads_from_and_to_rows_match_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("heads_from_and_to_rows_match_the_cpu_reference") else {
        return;
    };
    let s = gpu.stream();
    let kernels = HeadsKernels::load(&gpu).unwrap();
    let mut rng = rng(36);
    // dh = 8 at offset 24: the four-wide path; dh = 6 at offset 3: the one-wide path.
    for (dh, stride, offset) in [(8, 96, 24), (6, 40, 3)] {
        let shape = Heads {
            n: 2,
            t: 16,
            h: 3,
            dh,
            stride,
            offset,
        };
        let mut table = Vec::new();
        for _ in 0..shape.h {
            let mut p: Vec<u32> = (0..shape.t as u32).collect();
            p.shuffle(&mut rng);
            table.extend(p);
        }
        let dtable = gpu::upload(s, &table).unwrap();
        let order = SlotOrder {
            slot_token: Some(&dtable),
            scale: 0.5,
        };
        let rows = random(&mut rng, shape.rows_len());
        let mut heads = poisoned(&gpu, shape.heads_len());
        kernels
            .from_rows(s, &up(&gpu, &rows), &mut heads, shape, order)
            .unwrap();
        let heads = down(&gpu, &heads);
        let want = heads_from_rows(&rows, shape, Some(&table), 0.5);
        assert_eq!(to_bits(&heads), to_bits(&want), "{shape:?}: from rows");

        // Back into rows that hold other columns too: those stay as they were.
        let mut back = rows.clone();
        heads_to_rows(&heads, &mut back, shape, Some(&table), 0.5);
        let mut drows = up(&gpu, &rows);
        kernels
            .to_rows(s, &up(&gpu, &heads), &mut drows, shape, order)
            .unwrap();
        assert_eq!(
            to_bits(&down(&gpu, &drows)),
            to_bits(&back),
            "{shape:?}: to rows"
        );
    }
}
