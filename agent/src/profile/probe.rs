//! `bench-kernels --probe`: where a matmul's time goes on this adapter.
//!
//! Two WGSL probes at the matmul's size, next to the real kernel:
//! - **ALU ceiling**: the register-tiled inner loop of the matmul (4 x 8 outputs per
//!   invocation, vec4 FMAs) with its operand loads hoisted out of the k loop, so only the FMAs
//!   remain. What the adapter's arithmetic can do for this kernel shape.
//! - **Storage loads**: every invocation reads `K` vec4s of a storage buffer (consecutive
//!   across invocations, as a matmul reads B) and sums them. Floats loaded per second.
//!
//! A matmul that keeps a `TM x TN` tile in registers loads `TM + TN` floats per `TM * TN`
//! FMAs, so the load rate caps it at `2 * rate * TM*TN / (TM+TN)` FLOP/s. On a GPU that cap is
//! far above the ALU ceiling; on llvmpipe (every storage load is a loop over the SIMD lanes)
//! it is below it, which is why the WGSL matmul trails tract there.

use std::fmt::Write;
use std::time::Instant;

use super::ProfileError;
use crate::gpu::buffers::BufferPool;
use crate::gpu::context::GpuContext;

/// The register tile of the ALU probe and of the load bound.
const TM: usize = 4;
const TN: usize = 8;
/// Invocations per workgroup (x by y).
const WG: (usize, usize) = (8, 8);

/// What the probes measured.
#[derive(Clone, Copy, Debug)]
pub struct ProbeFigures {
    /// GFLOP/s of the FMA-only inner loop.
    pub alu_gflops: f64,
    /// Billions of f32 loaded per second through per-invocation vec4 storage loads.
    pub load_gfloats: f64,
}

impl ProbeFigures {
    /// GFLOP/s the load rate allows a matmul with a `tm x tn` register tile.
    pub fn load_bound(&self, tm: usize, tn: usize) -> f64 {
        2.0 * self.load_gfloats * (tm * tn) as f64 / (tm + tn) as f64
    }
}

fn alu_shader(n: usize) -> String {
    let nv = TN / 4;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;\n@group(0) @binding(1) var<storage, read_write> y: array<vec4<f32>>;"
    );
    let _ = writeln!(
        s,
        "@compute @workgroup_size({}, {}, 1)\nfn main(@builtin(global_invocation_id) g: vec3<u32>) {{",
        WG.0, WG.1
    );
    let _ = writeln!(s, "    let q0 = g.x * {nv}u;\n    let r0 = g.y * {TM}u;");
    // Operands loaded once: the loop below is FMAs only.
    for i in 0..TM {
        let _ = writeln!(s, "    let a{i} = a[(r0 + {i}u) % {}u];", n * n / 4);
        for j in 0..nv {
            let _ = writeln!(s, "    var c{i}_{j} = vec4<f32>(0.0);");
        }
    }
    for kk in 0..4 {
        for j in 0..nv {
            let _ = writeln!(
                s,
                "    let b{kk}_{j} = a[(q0 + {}u) % {}u];",
                kk * nv + j,
                n * n / 4
            );
        }
    }
    let _ = writeln!(s, "    for (var k = 0u; k < {}u; k += 4u) {{", n);
    for kk in 0..4 {
        let comp = ["x", "y", "z", "w"][kk];
        for i in 0..TM {
            for j in 0..nv {
                let _ = writeln!(
                    s,
                    "        c{i}_{j} = fma(vec4<f32>(a{i}.{comp}), b{kk}_{j}, c{i}_{j});"
                );
            }
        }
    }
    let _ = writeln!(s, "    }}");
    for i in 0..TM {
        for j in 0..nv {
            let _ = writeln!(
                s,
                "    y[((r0 + {i}u) * {}u + q0 + {j}u) % {}u] = c{i}_{j};",
                n / 4,
                n * n / 4
            );
        }
    }
    let _ = writeln!(s, "}}");
    s
}

fn load_shader(n: usize) -> String {
    format!(
        "@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;\n@group(0) @binding(1) var<storage, read_write> y: array<vec4<f32>>;\n@compute @workgroup_size(64, 1, 1)\nfn main(@builtin(global_invocation_id) g: vec3<u32>) {{\n    var s = vec4<f32>(0.0);\n    for (var k = 0u; k < {n}u; k++) {{ s += a[(k * {w}u + g.x) % {len}u]; }}\n    y[g.x % {len}u] = s;\n}}\n",
        w = n / 4,
        len = n * n / 4
    )
}

/// Median seconds of `runs` dispatches of `wgsl` over an `n x n` f32 buffer.
fn time(
    ctx: &GpuContext,
    label: &str,
    wgsl: &str,
    n: usize,
    groups: [u32; 3],
    runs: usize,
) -> Result<f64, ProfileError> {
    let pool = BufferPool::default();
    let a = pool.upload_f32(ctx, &[n * n], &vec![0.5; n * n])?;
    let y = pool.tensor(ctx, &[n * n], crate::gpu::buffers::GpuDType::F32)?;
    let pipeline = ctx.pipeline(label, wgsl)?;
    let group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: a.buffer.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: y.buffer.as_entire_binding(),
            },
        ],
    });
    let mut times = Vec::new();
    // One warm-up (the JIT), then the timed runs.
    for r in 0..=runs {
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        let t0 = Instant::now();
        ctx.queue.submit([enc.finish()]);
        ctx.wait()?;
        if r > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(super::stats(times).0)
}

/// Runs both probes at size `n` (a multiple of 32).
pub fn measure(ctx: &GpuContext, n: usize, runs: usize) -> Result<ProbeFigures, ProfileError> {
    let n = n.max(32) / 32 * 32;
    let alu_groups = [
        (n / TN).div_ceil(WG.0) as u32,
        (n / TM).div_ceil(WG.1) as u32,
        1,
    ];
    let alu = time(ctx, "probe-alu", &alu_shader(n), n, alu_groups, runs)?;
    let loads = time(
        ctx,
        "probe-loads",
        &load_shader(n),
        n,
        [(n / 4).div_ceil(64) as u32, 1, 1],
        runs,
    )?;
    Ok(ProbeFigures {
        alu_gflops: 2.0 * (n * n * n) as f64 / alu / 1e9,
        // n/4 invocations, n vec4 loads each.
        load_gfloats: (n * n) as f64 / loads / 1e9,
    })
}

/// The probes next to what the matmul kernel reached, one line at a time to `out`.
pub fn report(
    ctx: &GpuContext,
    n: usize,
    runs: usize,
    out: &mut dyn FnMut(String),
) -> Result<(), ProfileError> {
    let f = measure(ctx, n, runs)?;
    out(format!(
        "\n== where a matmul's time goes on {} (N={n}) ==",
        ctx.info.name
    ));
    out(format!(
        "ALU ceiling (FMA-only inner loop, {TM}x{TN} tile): {:.1} GFLOP/s",
        f.alu_gflops
    ));
    out(format!(
        "storage loads (vec4 per invocation): {:.2} G floats/s",
        f.load_gfloats
    ));
    for (tm, tn) in [(4, 8), (8, 16), (16, 16)] {
        out(format!(
            "  load bound of a {tm}x{tn} register tile: {:.1} GFLOP/s",
            f.load_bound(tm, tn)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_bound_grows_with_the_register_tile() {
        let f = ProbeFigures {
            alu_gflops: 100.0,
            load_gfloats: 2.0,
        };
        // 4x8: 32 FMAs per 12 floats loaded.
        assert!((f.load_bound(4, 8) - 2.0 * 2.0 * 32.0 / 12.0).abs() < 1e-9);
        assert!(f.load_bound(16, 16) > f.load_bound(8, 16));
    }

    #[test]
    fn both_probes_run_and_measure_something() {
        let Some(ctx) = crate::kernels::testutil::gpu() else {
            return;
        };
        let f = measure(ctx, 64, 2).expect("probes run");
        assert!(f.alu_gflops.is_finite() && f.alu_gflops > 0.0, "{f:?}");
        assert!(f.load_gfloats.is_finite() && f.load_gfloats > 0.0, "{f:?}");
    }
}
