//! Gemm / MatMul with a fused epilogue: batched (numpy batch broadcasting), transposed operands
//! (Gemm `transA`/`transB`), `alpha`/`beta` and the bias `C`.
//!
//! Each invocation computes a `TM x TN` block of outputs held in registers; a workgroup of
//! `WX x WY` invocations covers a `WY*TM x WX*TN` tile and each batch is one layer of the grid.
//! When the row length allows it, operands are read as `vec4<f32>` and the inner product is
//! unrolled four deep, which LLVM (lavapipe) and GPU compilers both turn into wide FMAs. Tile
//! sizes depend on the shape (see [`Tiles::for_shape`]); edge tiles clamp their loads and guard
//! their stores, so any size works.

use std::fmt::Write;

use moirai_core::kernel::KernelSignature;

use super::shader::{broadcast_index, lit, Shader};
use super::{attr_f, attr_i, epilogue, gpu_dtype, malformed, unsupported, KernelError, Plan, Slot};
use crate::gpu::buffers::GpuDType;
use crate::gpu::context::GpuContext;

/// Register and workgroup tiling of one matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiles {
    pub layout: Layout,
    pub tm: usize,
    pub tn: usize,
    pub wx: usize,
    pub wy: usize,
}

/// How outputs map to invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Each invocation owns a contiguous `TM x TN` block (vec4 loads of B): GPU style.
    Blocked,
    /// All invocations of a workgroup share the same `TM` rows; invocation `l` owns columns
    /// `l, l + WX, l + 2 WX, ...`. A's loads are then uniform across the workgroup (one scalar
    /// load broadcast to all SIMD lanes on CPU adapters such as lavapipe) and B's loads are
    /// consecutive across lanes.
    LaneColumns,
}

impl Tiles {
    /// Tiles for an `m x k x n` product (times `batch`). Large products get 4x8 blocks per
    /// invocation; thin ones (a single row, as in classifier heads) spread columns instead.
    pub fn for_shape(batch: usize, m: usize, _k: usize, n: usize, cpu_adapter: bool) -> Tiles {
        if let Some(t) = std::env::var("MOIRAI_MATMUL_TILES")
            .ok()
            .and_then(|s| Tiles::parse(&s))
        {
            return t;
        }
        // CPU adapters (lavapipe): every storage load is a loop over the SIMD lanes, so the
        // biggest register block that does not spill too much wins; 128 invocations per
        // workgroup amortise llvmpipe's per-workgroup cost. Measured on a 2-core EPYC, N=512:
        // 8x16x8x16 5.6, 8x16x8x8 4.1, 8x8x8x8 3.5, 4x8x8x8 2.4 GFLOP/s.
        if cpu_adapter && m >= 64 && n >= 64 {
            return Tiles {
                layout: Layout::Blocked,
                tm: 8,
                tn: 16,
                wx: 8,
                wy: 16,
            };
        }
        if m <= 2 {
            return Tiles {
                layout: Layout::Blocked,
                tm: 1,
                tn: 4,
                wx: 64,
                wy: 1,
            };
        }
        let tm = if m >= 32 { 4 } else { 2 };
        let tn = if n >= 64 { 8 } else { 4 };
        let mut t = Tiles {
            layout: Layout::Blocked,
            tm,
            tn,
            wx: 8,
            wy: 8,
        };
        // Keep at least a few workgroups per batch layer so every core gets work.
        while batch * m.div_ceil(t.tm * t.wy) * n.div_ceil(t.tn * t.wx) < 8 && t.wy > 1 {
            t.wy /= 2;
            t.wx = (t.wx / 2).max(4);
            if t.wx == 4 && t.wy == 1 {
                break;
            }
        }
        t
    }

    /// "TMxTNxWXxWY" (blocked), e.g. "4x8x8x8", or "lTMxTNxWX" (lane columns).
    pub fn parse(s: &str) -> Option<Tiles> {
        if let Some(rest) = s.strip_prefix('l') {
            let v: Vec<usize> = rest
                .split('x')
                .map(|p| p.trim().parse().ok())
                .collect::<Option<_>>()?;
            return match v[..] {
                [tm, tn, wx] if tm > 0 && tn > 0 && wx > 0 && wx <= 256 => Some(Tiles {
                    layout: Layout::LaneColumns,
                    tm,
                    tn,
                    wx,
                    wy: 1,
                }),
                _ => None,
            };
        }
        let v: Vec<usize> = s
            .split('x')
            .map(|p| p.trim().parse().ok())
            .collect::<Option<_>>()?;
        match v[..] {
            [tm, tn, wx, wy] if tm > 0 && tn > 0 && wx > 0 && wy > 0 && wx * wy <= 256 => {
                Some(Tiles {
                    layout: Layout::Blocked,
                    tm,
                    tn,
                    wx,
                    wy,
                })
            }
            _ => None,
        }
    }
}

pub fn plan(
    sig: &KernelSignature,
    wiring: &[Vec<usize>],
    ctx: &GpuContext,
) -> Result<Plan, KernelError> {
    let head = &sig.nodes[0];
    let gemm = match head.op_type.as_str() {
        "Gemm" => true,
        "MatMul" => false,
        other => return Err(unsupported(sig, format!("{other} as a matmul head"))),
    };
    let w = &wiring[0];
    if w.len() < 2 {
        return Err(malformed(sig, "matmul needs two operands"));
    }
    let (ia, ib) = (w[0], w[1]);
    let (ta, tb) = if gemm {
        (
            attr_i(head, "transA", 0) != 0,
            attr_i(head, "transB", 0) != 0,
        )
    } else {
        (false, false)
    };
    let a = &sig.inputs[ia].dims;
    let b = &sig.inputs[ib].dims;
    let out = &sig.outputs[0].dims;
    if a.is_empty() || b.is_empty() || out.is_empty() {
        return Err(unsupported(sig, "matmul on scalars"));
    }
    // 1-D operands: numpy promotes them to a row (A) or a column (B).
    let a2: Vec<usize> = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.clone()
    };
    let b2: Vec<usize> = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.clone()
    };
    let (m, k) = if ta {
        (a2[a2.len() - 1], a2[a2.len() - 2])
    } else {
        (a2[a2.len() - 2], a2[a2.len() - 1])
    };
    let (kb, n) = if tb {
        (b2[b2.len() - 1], b2[b2.len() - 2])
    } else {
        (b2[b2.len() - 2], b2[b2.len() - 1])
    };
    if k != kb {
        return Err(malformed(sig, format!("inner sizes differ: {k} vs {kb}")));
    }
    let a_batch = &a2[..a2.len() - 2];
    let b_batch = &b2[..b2.len() - 2];
    let batch_rank = a_batch.len().max(b_batch.len());
    let mut out_batch = vec![1usize; batch_rank];
    for (i, ob) in out_batch.iter_mut().enumerate() {
        let pick = |v: &[usize]| {
            let off = batch_rank - v.len();
            if i >= off {
                v[i - off]
            } else {
                1
            }
        };
        *ob = pick(a_batch).max(pick(b_batch));
    }
    let batch: usize = out_batch.iter().product();
    if batch * m * n != sig.outputs[0].elements() {
        return Err(malformed(
            sig,
            format!("output {:?} is not {batch}x{m}x{n}", out),
        ));
    }
    if batch > ctx.limits.max_compute_workgroups_per_dimension as usize {
        return Err(unsupported(sig, format!("batch of {batch}")));
    }

    let b_shared = b_batch.iter().product::<usize>() == 1;
    // Weights shared by every batch (a Linear on [N, H, W, C] or [B, S, K]): the batches are
    // just more rows of one matmul, which tiles far better than many thin ones (ConvNeXt's
    // MLP ran at 0.6 GFLOP/s on lavapipe as 56 matmuls of 56 rows).
    let fold = b_shared && !ta && batch > 1 && a_batch.iter().product::<usize>() == batch;
    let (m, batch, out_batch, a_batch, b_batch): (usize, usize, Vec<usize>, &[usize], &[usize]) =
        if fold {
            (batch * m, 1, Vec::new(), &[], &[])
        } else {
            (m, batch, out_batch, a_batch, b_batch)
        };
    // Opt-in: measured slower than the blocked layout on Mesa 22.3 lavapipe (1.2 vs 3.9
    // GFLOP/s at N=1024), kept for newer llvmpipe builds where uniform loads are cheaper.
    let want_uniform = std::env::var("MOIRAI_MATMUL_UNIFORM_A").is_ok_and(|v| v != "0");
    if want_uniform && !ta && !tb && b_shared && k % 4 == 0 && n % 4 == 0 {
        if let Some(p) = plan_uniform_a(sig, wiring, ctx, batch * m, k, n, gemm)? {
            return Ok(p);
        }
    }
    let t = Tiles::for_shape(batch, m, k, n, ctx.is_software());
    let lanes = t.layout == Layout::LaneColumns;
    let mut sh = Shader::default();
    // vec4 paths: rows of B (or A) contiguous and a multiple of 4 long.
    let vb = !lanes && !tb && n % 4 == 0 && t.tn.is_multiple_of(4);
    let va = !ta && k % 4 == 0;
    let an = sh.input(ia, GpuDType::F32);
    let bn = sh.input(ib, GpuDType::F32);
    // Re-declare A/B with vec4 element type when vectorised: same buffer, wider loads.
    let mut decl_fix: Vec<(String, String)> = Vec::new();
    if va {
        decl_fix.push((
            format!("var<storage, read> {an}: array<f32>;"),
            format!("var<storage, read> {an}: array<vec4<f32>>;"),
        ));
    }
    if vb {
        decl_fix.push((
            format!("var<storage, read> {bn}: array<f32>;"),
            format!("var<storage, read> {bn}: array<vec4<f32>>;"),
        ));
    }

    // Gemm's C (bias) with alpha and beta, then the epilogue.
    let alpha = if gemm {
        attr_f(head, "alpha", 1.0)
    } else {
        1.0
    };
    let beta = if gemm { attr_f(head, "beta", 1.0) } else { 1.0 };
    let bias = if gemm && w.len() > 2 {
        let ic = w[2];
        let cn = sh.input(ic, gpu_dtype(sig.inputs[ic].dtype));
        let ix = broadcast_index(&[m, n], &sig.inputs[ic].dims, "(idx % MN)");
        format!(" + {} * {cn}[{ix}]", lit(beta))
    } else {
        String::new()
    };
    let scale = if alpha == 1.0 {
        String::new()
    } else {
        format!("{} * ", lit(alpha))
    };
    epilogue::emit(sig, 1, &wiring[1..], &mut sh)?;
    let y = sh.output(0, gpu_dtype(sig.outputs[0].dtype));

    let mut src = String::new();
    let (tm, tn, wx, wy) = (t.tm, t.tn, t.wx, t.wy);
    let _ = writeln!(
        src,
        "const M: u32 = {m}u;\nconst N: u32 = {n}u;\nconst K: u32 = {k}u;\nconst MN: u32 = {}u;",
        m * n
    );
    let _ = writeln!(
        src,
        "@compute @workgroup_size({wx}, {wy}, 1)\nfn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{"
    );
    let _ = writeln!(src, "    let bz = wid.z;");
    // Batch offsets in elements.
    let a_off = broadcast_index(&out_batch, a_batch, "bz");
    let b_off = broadcast_index(&out_batch, b_batch, "bz");
    let _ = writeln!(src, "    let a_off = ({a_off}) * {};", m * k);
    let _ = writeln!(src, "    let b_off = ({b_off}) * {};", k * n);
    if lanes {
        let _ = writeln!(src, "    let row0 = wid.y * {tm}u;");
        let _ = writeln!(src, "    let col0 = wid.x * {}u + lid.x;", wx * tn);
    } else {
        let _ = writeln!(src, "    let row0 = (wid.y * {wy}u + lid.y) * {tm}u;");
        let _ = writeln!(src, "    let col0 = (wid.x * {wx}u + lid.x) * {tn}u;");
    }
    // Column of register j.
    let cstep = if lanes { wx } else { 1 };
    for i in 0..tm {
        let _ = writeln!(src, "    let r{i} = min(row0 + {i}u, M - 1u);");
    }
    let nv = tn / 4;
    if vb {
        for j in 0..nv {
            let _ = writeln!(src, "    let q{j} = min(col0 / 4u + {j}u, N / 4u - 1u);");
        }
        for i in 0..tm {
            for j in 0..nv {
                let _ = writeln!(src, "    var c{i}_{j} = vec4<f32>(0.0);");
            }
        }
    } else {
        for j in 0..tn {
            let _ = writeln!(src, "    let q{j} = min(col0 + {}u, N - 1u);", j * cstep);
        }
        for i in 0..tm {
            for j in 0..tn {
                let _ = writeln!(src, "    var c{i}_{j} = 0.0;");
            }
        }
    }
    // A element (row i, k index expr) as scalar.
    let a_scalar = |i: usize, kk: &str| -> String {
        if ta {
            format!("{an}[a_off + ({kk}) * M + r{i}]")
        } else {
            format!("{an}[a_off + r{i} * K + {kk}]")
        }
    };
    let b_scalar = |kk: &str, j: usize| -> String {
        if tb {
            format!("{bn}[b_off + q{j} * K + {kk}]")
        } else {
            format!("{bn}[b_off + ({kk}) * N + q{j}]")
        }
    };
    let step = if va { 4 } else { 1 };
    let _ = writeln!(src, "    for (var k = 0u; k < K; k += {step}u) {{");
    if va {
        for i in 0..tm {
            let _ = writeln!(src, "        let a{i} = {an}[(a_off + r{i} * K + k) / 4u];");
        }
    }
    for kk in 0..step {
        let kexpr = if step == 1 {
            "k".to_string()
        } else {
            format!("k + {kk}u")
        };
        let av = |i: usize| -> String {
            if va {
                format!("a{i}[{kk}]")
            } else {
                a_scalar(i, &kexpr)
            }
        };
        if vb {
            for j in 0..nv {
                let _ = writeln!(
                    src,
                    "        let b{kk}_{j} = {bn}[(b_off + ({kexpr}) * N) / 4u + q{j}];"
                );
            }
            for i in 0..tm {
                let _ = writeln!(src, "        let s{kk}_{i} = {};", av(i));
                for j in 0..nv {
                    let _ = writeln!(
                        src,
                        "        c{i}_{j} = fma(vec4<f32>(s{kk}_{i}), b{kk}_{j}, c{i}_{j});"
                    );
                }
            }
        } else {
            for j in 0..tn {
                let _ = writeln!(src, "        let b{kk}_{j} = {};", b_scalar(&kexpr, j));
            }
            for i in 0..tm {
                let _ = writeln!(src, "        let s{kk}_{i} = {};", av(i));
                for j in 0..tn {
                    let _ = writeln!(
                        src,
                        "        c{i}_{j} = fma(s{kk}_{i}, b{kk}_{j}, c{i}_{j});"
                    );
                }
            }
        }
    }
    let _ = writeln!(src, "    }}");
    // Stores, guarded at the edges.
    let _ = writeln!(src, "    let base = bz * MN;");
    for i in 0..tm {
        for j in 0..tn {
            let val = if vb {
                format!("c{i}_{}[{}]", j / 4, j % 4)
            } else {
                format!("c{i}_{j}")
            };
            let _ = writeln!(
                src,
                "    if (row0 + {i}u < M && col0 + {cj}u < N) {{ let idx = base + (row0 + {i}u) * N + col0 + {cj}u; {y}[idx] = epi({scale}{val}{bias}, idx); }}",
                cj = j * cstep
            );
        }
    }
    let _ = writeln!(src, "}}");

    let (mut wgsl, slots) = sh.finish(&src);
    for (from, to) in decl_fix {
        wgsl = wgsl.replace(&from, &to);
    }
    let groups = [
        n.div_ceil(tn * wx) as u32,
        m.div_ceil(tm * wy) as u32,
        batch as u32,
    ];
    Ok(Plan {
        steps: vec![(wgsl, slots, groups)],
        aliases: vec![None],
        consts: Vec::new(),
    })
}

/// Rows of A per uniform binding, and rows per invocation, for the uniform-A layout.
const UA_TM: usize = 8;
const UA_WX: usize = 16;

/// Matmul variant for CPU adapters (opt-in, `MOIRAI_MATMUL_UNIFORM_A=1`): A is read through
/// uniform bindings, B as vec4.
///
/// On llvmpipe every storage-buffer load is a loop over the SIMD lanes, while a uniform load
/// at a workgroup-uniform offset is one scalar load broadcast to all lanes. Here all
/// invocations of a workgroup share the same `UA_TM` rows of A (so every A load is uniform)
/// and each invocation owns four adjacent columns (one vec4 load of B per k). A is bound in
/// row blocks that fit the uniform binding limit, one dispatch per block; a small constant
/// buffer tells each dispatch its first row. Requires B without batch (shared weights),
/// neither operand transposed, and K and N multiples of 4; `None` when the limits do not
/// allow a block.
#[allow(clippy::too_many_arguments)]
fn plan_uniform_a(
    sig: &KernelSignature,
    wiring: &[Vec<usize>],
    ctx: &GpuContext,
    rows: usize,
    k: usize,
    n: usize,
    gemm: bool,
) -> Result<Option<Plan>, KernelError> {
    let head = &sig.nodes[0];
    let w = &wiring[0];
    let (ia, ib) = (w[0], w[1]);
    let max_bytes = (ctx.limits.max_uniform_buffer_binding_size as usize).min(1 << 16);
    let align = ctx.limits.min_uniform_buffer_offset_alignment.max(16) as usize;
    let tm = UA_TM.min(rows.max(1));
    let mut block = (max_bytes / (4 * k)) / tm * tm;
    block = block.min(rows.div_ceil(tm) * tm);
    while block > 0 && !(block * k * 4).is_multiple_of(align) {
        block -= tm;
    }
    if block == 0 {
        return Ok(None);
    }
    let alpha = if gemm {
        attr_f(head, "alpha", 1.0)
    } else {
        1.0
    };
    let beta = if gemm { attr_f(head, "beta", 1.0) } else { 1.0 };
    let nv = n / 4;
    let wx = UA_WX.min(nv.next_power_of_two()).max(1);
    // One shader per distinct block height (all blocks but perhaps the last share one).
    let shader = |rows_here: usize| -> Result<(String, Vec<Slot>), KernelError> {
        let mut sh = Shader::default();
        sh.uniform_range("amat", ia, rows_here * k / 4);
        let bn = sh.input(ib, GpuDType::F32);
        sh.constants("cb");
        let bias = if gemm && w.len() > 2 {
            let ic = w[2];
            let cn = sh.input(ic, gpu_dtype(sig.inputs[ic].dtype));
            let ix = broadcast_index(&[rows, n], &sig.inputs[ic].dims, "idx");
            format!(" + {} * f32({cn}[{ix}])", lit(beta))
        } else {
            String::new()
        };
        let scale = if alpha == 1.0 {
            String::new()
        } else {
            format!("{} * ", lit(alpha))
        };
        epilogue::emit(sig, 1, &wiring[1..], &mut sh)?;
        let y = sh.output(0, gpu_dtype(sig.outputs[0].dtype));
        let mut src = String::new();
        let _ = writeln!(
            src,
            "@compute @workgroup_size({wx}, 1, 1)\nfn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{"
        );
        let _ = writeln!(src, "    let base = cb[0];");
        let _ = writeln!(src, "    let r0 = wid.y * {tm}u;");
        let _ = writeln!(src, "    let qq = wid.x * {wx}u + lid.x;");
        let _ = writeln!(src, "    let q = min(qq, {}u);", nv - 1);
        for i in 0..tm {
            let _ = writeln!(
                src,
                "    let a{i}o = min(r0 + {i}u, {}u) * {}u;",
                rows_here - 1,
                k / 4
            );
            let _ = writeln!(src, "    var c{i} = vec4<f32>(0.0);");
        }
        let _ = writeln!(src, "    for (var k4 = 0u; k4 < {}u; k4++) {{", k / 4);
        let _ = writeln!(src, "        let kb = k4 * {n}u + q;");
        for kk in 0..4 {
            let _ = writeln!(src, "        let b{kk} = {bn}[kb + {}u];", kk * nv);
        }
        for i in 0..tm {
            let _ = writeln!(src, "        let a{i} = amat[a{i}o + k4];");
            for kk in 0..4 {
                let comp = ["x", "y", "z", "w"][kk];
                let _ = writeln!(
                    src,
                    "        c{i} = fma(vec4<f32>(a{i}.{comp}), b{kk}, c{i});"
                );
            }
        }
        let _ = writeln!(src, "    }}");
        let _ = writeln!(src, "    if (qq >= {nv}u) {{ return; }}");
        for i in 0..tm {
            let _ = writeln!(
                src,
                "    if (r0 + {i}u < {rows_here}u) {{\n        let i0 = (base + r0 + {i}u) * {n}u + q * 4u;"
            );
            for (e, comp) in ["x", "y", "z", "w"].iter().enumerate() {
                let _ = writeln!(
                    src,
                    "        {{ let idx = i0 + {e}u; {y}[idx] = epi({scale}c{i}.{comp}{bias}, idx); }}"
                );
            }
            let _ = writeln!(src, "    }}");
        }
        let _ = writeln!(src, "}}");
        let (wgsl, slots) = sh.finish(&src);
        // B rows are read four floats at a time: same buffer, vec4 elements.
        let wgsl = wgsl.replace(
            &format!("var<storage, read> {bn}: array<f32>;"),
            &format!("var<storage, read> {bn}: array<vec4<f32>>;"),
        );
        Ok((wgsl, slots))
    };
    let mut steps = Vec::new();
    let mut consts = Vec::new();
    let mut cache: Vec<(usize, String, Vec<Slot>)> = Vec::new();
    let mut r = 0;
    while r < rows {
        let here = block.min(rows - r);
        let (src, slots) = match cache.iter().find(|c| c.0 == here) {
            Some((_, s, sl)) => (s.clone(), sl.clone()),
            None => {
                let (s, sl) = shader(here)?;
                cache.push((here, s.clone(), sl.clone()));
                (s, sl)
            }
        };
        let j = consts.len();
        consts.push(vec![r as u32]);
        let slots: Vec<Slot> = slots
            .into_iter()
            .map(|s| match s {
                Slot::UniformRange { input, size, .. } => Slot::UniformRange {
                    input,
                    offset: (4 * r * k) as u64,
                    size: size.min((4 * here * k) as u64),
                },
                Slot::Const(_) => Slot::Const(j),
                other => other,
            })
            .collect();
        steps.push((
            src,
            slots,
            [nv.div_ceil(wx) as u32, here.div_ceil(tm) as u32, 1],
        ));
        r += here;
    }
    Ok(Some(Plan {
        steps,
        aliases: vec![None],
        consts,
    }))
}
