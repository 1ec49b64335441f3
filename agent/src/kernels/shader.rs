//! Assembling a WGSL compute shader: storage bindings in order, shared helper functions, and
//! the 1-D grid most kernels use.

use std::fmt::Write;

use super::Slot;
use crate::gpu::buffers::GpuDType;

/// Threads per workgroup of the 1-D element-wise style kernels.
pub const WG: u32 = 64;
/// Largest workgroup count per grid dimension WebGPU guarantees.
const MAX_GROUPS: u32 = 65535;

/// Helper functions any generated shader may call.
const PRELUDE: &str = r#"
fn erf_approx(x: f32) -> f32 {
    // Abramowitz and Stegun 7.1.26, |error| < 1.5e-7.
    let s = sign(x);
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a);
    return s * y;
}
fn sigmoid(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }
"#;

/// Bindings and code of one shader being generated.
#[derive(Default)]
pub struct Shader {
    decls: String,
    pub slots: Vec<Slot>,
    pub functions: String,
}

impl Shader {
    /// The WGSL name of signature input `i`, declared on first use.
    pub fn input(&mut self, i: usize, dtype: GpuDType) -> String {
        let name = format!("in{i}");
        if !self.slots.contains(&Slot::Input(i)) {
            let b = self.slots.len();
            let ty = match dtype {
                GpuDType::F32 => "f32",
                GpuDType::I32 => "i32",
            };
            let _ = writeln!(
                self.decls,
                "@group(0) @binding({b}) var<storage, read> {name}: array<{ty}>;"
            );
            self.slots.push(Slot::Input(i));
        }
        name
    }

    /// The WGSL name of output `o`, declared on first use.
    pub fn output(&mut self, o: usize, dtype: GpuDType) -> String {
        let name = format!("out{o}");
        if !self.slots.contains(&Slot::Output(o)) {
            let b = self.slots.len();
            let ty = match dtype {
                GpuDType::F32 => "f32",
                GpuDType::I32 => "i32",
            };
            let _ = writeln!(
                self.decls,
                "@group(0) @binding({b}) var<storage, read_write> {name}: array<{ty}>;"
            );
            self.slots.push(Slot::Output(o));
        }
        name
    }

    /// Declares `name` as a uniform `array<vec4<f32>, vec4s>` bound to a byte range of input
    /// `input` (the range is set per dispatch; see [`Slot::UniformRange`]).
    pub fn uniform_range(&mut self, name: &str, input: usize, vec4s: usize) {
        let b = self.slots.len();
        let _ = writeln!(
            self.decls,
            "@group(0) @binding({b}) var<uniform> {name}: array<vec4<f32>, {vec4s}>;"
        );
        self.slots.push(Slot::UniformRange {
            input,
            offset: 0,
            size: 16 * vec4s as u64,
        });
    }

    /// Declares `name` as a read-only `array<u32>` bound to plan constant 0 (set per dispatch).
    pub fn constants(&mut self, name: &str) {
        let b = self.slots.len();
        let _ = writeln!(
            self.decls,
            "@group(0) @binding({b}) var<storage, read> {name}: array<u32>;"
        );
        self.slots.push(Slot::Const(0));
    }

    /// The complete WGSL source with `main` as given.
    pub fn finish(self, main: &str) -> (String, Vec<Slot>) {
        (
            format!("{}\n{PRELUDE}\n{}\n{main}", self.decls, self.functions),
            self.slots,
        )
    }
}

/// A grid of `WG`-thread workgroups covering `n` items, folded into two dimensions when it
/// exceeds the per-dimension limit. Returns the grid and the WGSL expression of the item index.
pub fn grid_1d(n: usize) -> ([u32; 3], String) {
    let groups = (n as u64).div_ceil(WG as u64).max(1) as u32;
    let gx = groups.min(MAX_GROUPS);
    let gy = groups.div_ceil(gx);
    (
        [gx, gy, 1],
        format!("(wid.y * {gx}u + wid.x) * {WG}u + lid.x"),
    )
}

/// Strides of a row-major shape.
pub fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// WGSL expression for the flat index into a tensor of shape `inp` broadcast (numpy rules,
/// right-aligned) to `out`, given the flat output index expression `idx`.
pub fn broadcast_index(out: &[usize], inp: &[usize], idx: &str) -> String {
    let n_in: usize = inp.iter().product();
    let n_out: usize = out.iter().product();
    if n_in == 1 {
        return "0u".into();
    }
    let strip = |d: &[usize]| -> Vec<usize> {
        let first = d.iter().position(|&x| x != 1).unwrap_or(d.len());
        d[first..].to_vec()
    };
    if n_in == n_out && strip(inp) == strip(out) {
        return idx.to_string();
    }
    let os = strides(out);
    let is = strides(inp);
    let off = out.len().saturating_sub(inp.len());
    let mut terms = Vec::new();
    for (d, &size) in inp.iter().enumerate() {
        if size == 1 {
            continue;
        }
        let od = d + off;
        let coord = if od == 0 {
            format!("({idx} / {}u)", os[0])
        } else {
            format!("(({idx} / {}u) % {}u)", os[od], out[od])
        };
        terms.push(if is[d] == 1 {
            coord
        } else {
            format!("{coord} * {}u", is[d])
        });
    }
    if terms.is_empty() {
        "0u".into()
    } else {
        terms.join(" + ")
    }
}

/// A float literal WGSL accepts (finite; infinities clamp to the f32 range).
pub fn lit(x: f32) -> String {
    let x = if x.is_finite() {
        x
    } else if x > 0.0 {
        f32::MAX
    } else if x < 0.0 {
        f32::MIN
    } else {
        0.0
    };
    format!("{x:?}")
}
