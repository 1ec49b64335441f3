//! A small ONNX writer, for tests and fixtures: models built in code instead of binary files
//! nobody can read.
//!
//! ```
//! use moirai_model::import::onnx::build::ModelBuilder;
//! use moirai_core::kernel::DType;
//! let bytes = ModelBuilder::new("tiny")
//!     .input("x", DType::F32, &[1, 4])
//!     .initializer("w", &[4, 2])
//!     .node("MatMul", &["x", "w"], &["y"])
//!     .node("Relu", &["y"], &["z"])
//!     .output("z", DType::F32, &[1, 2])
//!     .encode();
//! assert!(!bytes.is_empty());
//! ```

use moirai_core::kernel::{AttrValue, DType, TensorShape};
use prost::Message;
use tract_onnx::pb;

use super::shapes::value_info;

/// Builds an ONNX `ModelProto` (opset 17) node by node.
#[derive(Clone, Debug)]
pub struct ModelBuilder {
    graph: pb::GraphProto,
    opset: i64,
}

fn shape(dtype: DType, dims: &[usize]) -> TensorShape {
    TensorShape {
        dims: dims.to_vec(),
        dtype,
    }
}

fn attribute(name: &str, v: &AttrValue) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType as T;
    let mut a = pb::AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match v {
        AttrValue::Int(i) => {
            a.r#type = T::Int as i32;
            a.i = *i;
        }
        AttrValue::Ints(v) => {
            a.r#type = T::Ints as i32;
            a.ints = v.clone();
        }
        AttrValue::Float(f) => {
            a.r#type = T::Float as i32;
            a.f = *f;
        }
        AttrValue::Floats(v) => {
            a.r#type = T::Floats as i32;
            a.floats = v.clone();
        }
        AttrValue::Str(s) => {
            a.r#type = T::String as i32;
            a.s = s.as_bytes().to_vec();
        }
    }
    a
}

impl ModelBuilder {
    pub fn new(name: &str) -> ModelBuilder {
        ModelBuilder {
            graph: pb::GraphProto {
                name: name.to_string(),
                ..Default::default()
            },
            opset: 17,
        }
    }

    /// A graph input fed at run time.
    pub fn input(mut self, name: &str, dtype: DType, dims: &[usize]) -> Self {
        self.graph.input.push(value_info(name, &shape(dtype, dims)));
        self
    }

    /// A graph output with its shape.
    pub fn output(mut self, name: &str, dtype: DType, dims: &[usize]) -> Self {
        self.graph
            .output
            .push(value_info(name, &shape(dtype, dims)));
        self
    }

    /// A graph output without a declared shape (left to inference).
    pub fn output_untyped(mut self, name: &str) -> Self {
        self.graph.output.push(pb::ValueInfoProto {
            name: name.to_string(),
            ..Default::default()
        });
        self
    }

    /// Declares the shape of an intermediate tensor.
    pub fn value_info(mut self, name: &str, dtype: DType, dims: &[usize]) -> Self {
        self.graph
            .value_info
            .push(value_info(name, &shape(dtype, dims)));
        self
    }

    /// An f32 initializer of zeros, inline.
    pub fn initializer(mut self, name: &str, dims: &[usize]) -> Self {
        let n: usize = dims.iter().product();
        self.graph.initializer.push(pb::TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: vec![0; n * 4],
            ..Default::default()
        });
        self
    }

    /// A 1-D int64 initializer (shape constants), inline.
    pub fn initializer_i64(mut self, name: &str, values: &[i64]) -> Self {
        self.graph.initializer.push(pb::TensorProto {
            name: name.to_string(),
            dims: vec![values.len() as i64],
            data_type: pb::tensor_proto::DataType::Int64 as i32,
            int64_data: values.to_vec(),
            ..Default::default()
        });
        self
    }

    /// An f32 initializer whose data lives in `file` (relative to the model) at `offset`.
    pub fn external_initializer(
        mut self,
        name: &str,
        dims: &[usize],
        file: &str,
        offset: usize,
    ) -> Self {
        let n: usize = dims.iter().product();
        let entry = |k: &str, v: String| pb::StringStringEntryProto {
            key: k.to_string(),
            value: v,
        };
        self.graph.initializer.push(pb::TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            data_location: Some(pb::tensor_proto::DataLocation::External as i32),
            external_data: vec![
                entry("location", file.to_string()),
                entry("offset", offset.to_string()),
                entry("length", (n * 4).to_string()),
            ],
            ..Default::default()
        });
        self
    }

    /// A node without attributes, named after its first output.
    pub fn node(self, op_type: &str, inputs: &[&str], outputs: &[&str]) -> Self {
        self.node_with(op_type, inputs, outputs, &[])
    }

    /// A node with attributes, named after its first output.
    pub fn node_with(
        mut self,
        op_type: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: &[(&str, AttrValue)],
    ) -> Self {
        self.graph.node.push(pb::NodeProto {
            name: outputs
                .first()
                .map(|o| format!("{o}_node"))
                .unwrap_or_default(),
            op_type: op_type.to_string(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs.iter().map(|(k, v)| attribute(k, v)).collect(),
            ..Default::default()
        });
        self
    }

    /// A node in a custom domain (for unknown-op tests).
    pub fn node_in_domain(
        mut self,
        domain: &str,
        op_type: &str,
        inputs: &[&str],
        outputs: &[&str],
    ) -> Self {
        self = self.node(op_type, inputs, outputs);
        if let Some(n) = self.graph.node.last_mut() {
            n.domain = domain.to_string();
        }
        self
    }

    pub fn proto(self) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: 8,
            producer_name: "moirai-test".into(),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            }],
            graph: Some(self.graph),
            ..Default::default()
        }
    }

    /// The serialized model.
    pub fn encode(self) -> Vec<u8> {
        self.proto().encode_to_vec()
    }
}
