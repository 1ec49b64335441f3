//! Cutting a placed model into one [`SubgraphSpec`] per agent: which ONNX nodes each agent
//! runs (its fused groups' nodes and the shape-only nodes they fold), which tensors it
//! receives and from whom, and where each tensor it produces goes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use moirai_core::wire::data::{Destination, OutputRoute, SubgraphSpec, TensorSpec};
use moirai_core::wire::topic::agent_name;

use crate::coarsen::CoarseGraph;
use crate::import::onnx::{OnnxModel, TensorOrigin};

/// Why a placement cannot be cut into subgraphs.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("group `{0}` is not placed on any agent")]
    Unplaced(String),
    #[error("tensor `{0}` crosses devices but has no static shape, or an element type that cannot (f32, f16, int64, int32, int8, uint8 and bool can)")]
    NoShape(String),
    #[error("agent name `{0}` is not valid on the wire")]
    Name(String),
    #[error("tensor `{0}` is read but nothing produces it")]
    Dangling(String),
    /// One subgraph per agent runs when all its inputs are there, so shares that feed each
    /// other both ways would wait on each other for ever.
    #[error("the shares depend on each other in a cycle ({}): one subgraph per agent cannot run this placement", .0.join(" -> "))]
    Cycle(Vec<String>),
}

/// A cycle between agents in `placement` (each group's agent) along the group edges, as
/// the agents on it with the first repeated at the end; `None` when the shares form a DAG.
pub fn share_cycle(
    coarse: &CoarseGraph,
    placement: &BTreeMap<String, String>,
) -> Option<Vec<String>> {
    let agent_of = |i: usize| coarse.groups.get(i).and_then(|g| placement.get(&g.name));
    let mut next: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in &coarse.edges {
        if let (Some(a), Some(b)) = (agent_of(e.src), agent_of(e.dst)) {
            if a != b {
                next.entry(a.as_str()).or_default().insert(b.as_str());
            }
        }
    }
    // Depth-first search with colours: on the stack (grey) or finished (black).
    fn visit<'a>(
        at: &'a str,
        next: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| *s == at) {
            let mut cycle: Vec<String> = stack[i..].iter().map(|s| s.to_string()).collect();
            cycle.push(at.to_string());
            return Some(cycle);
        }
        if done.contains(at) {
            return None;
        }
        stack.push(at);
        for &n in next.get(at).into_iter().flatten() {
            if let Some(c) = visit(n, next, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(at);
        None
    }
    let mut done = BTreeSet::new();
    for &a in next.keys() {
        if let Some(c) = visit(a, &next, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

/// The plan epoch cut into subgraphs.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    pub specs: BTreeMap<String, SubgraphSpec>,
    /// Graph inputs and the agents that read them.
    pub inputs: Vec<(TensorSpec, Vec<String>)>,
    /// Graph outputs, in the model's order.
    pub outputs: Vec<TensorSpec>,
}

/// How `tensor` crosses devices: its element type and static shape. The importer keeps a
/// shape only for the element types a [`moirai_core::tensor::TensorValue`] carries, so a
/// tensor of any other type (double, string) is refused here, at planning time, by name.
pub fn spec_of(model: &OnnxModel, tensor: &str) -> Result<TensorSpec, SplitError> {
    let s = model
        .shape(tensor)
        .ok_or_else(|| SplitError::NoShape(tensor.to_string()))?;
    Ok(TensorSpec {
        name: tensor.to_string(),
        dtype: s.dtype,
        dims: s.dims.iter().map(|&d| d as u64).collect(),
    })
}

/// Cuts `coarse` (placed by `placement`: group name to agent) into subgraphs.
/// `weight_bytes` gives the weight bytes of a node list (from the model file).
pub fn split(
    model: &OnnxModel,
    coarse: &CoarseGraph,
    placement: &BTreeMap<String, String>,
    epoch: u64,
    sha256: [u8; 32],
    predicted_ms: f64,
    weight_bytes: impl Fn(&[String]) -> u64,
) -> Result<Split, SplitError> {
    if let Some(cycle) = share_cycle(coarse, placement) {
        return Err(SplitError::Cycle(cycle));
    }
    // Nodes each agent runs (sorted: the model's nodes are in a topological order), and the
    // agent that runs each non-folded node.
    let mut nodes_of: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut owner: HashMap<usize, String> = HashMap::new();
    for g in &coarse.groups {
        let agent = placement
            .get(&g.name)
            .ok_or_else(|| SplitError::Unplaced(g.name.clone()))?;
        let set = nodes_of.entry(agent.clone()).or_default();
        set.extend(g.folded.iter().copied());
        set.extend(g.nodes.iter().copied());
        for &n in &g.nodes {
            owner.insert(n, agent.clone());
        }
    }
    let mut agents: BTreeSet<String> = placement.values().cloned().collect();
    agents.extend(nodes_of.keys().cloned());
    // What each agent must receive, and from whom.
    let mut receives: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut routes: BTreeMap<String, BTreeMap<String, BTreeSet<Destination>>> = BTreeMap::new();
    let mut input_readers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (agent, nodes) in &nodes_of {
        let produced: BTreeSet<&str> = nodes
            .iter()
            .flat_map(|&n| model.nodes[n].outputs.iter().map(String::as_str))
            .collect();
        for &n in nodes {
            for t in model.nodes[n].inputs.iter().filter(|t| !t.is_empty()) {
                if produced.contains(t.as_str()) {
                    continue;
                }
                match model.tensors.get(t).map(|i| &i.origin) {
                    Some(TensorOrigin::Initializer(_)) => continue,
                    Some(TensorOrigin::Input) => {
                        input_readers
                            .entry(t.clone())
                            .or_default()
                            .insert(agent.clone());
                    }
                    Some(TensorOrigin::Node(p)) => {
                        let from = owner
                            .get(p)
                            .ok_or_else(|| SplitError::Dangling(t.clone()))?;
                        let to = Destination::Agent(
                            agent_name(agent).map_err(|_| SplitError::Name(agent.clone()))?,
                        );
                        routes
                            .entry(from.clone())
                            .or_default()
                            .entry(t.clone())
                            .or_default()
                            .insert(to);
                    }
                    None => return Err(SplitError::Dangling(t.clone())),
                }
                receives.entry(agent.clone()).or_default().insert(t.clone());
            }
        }
    }
    for out in &model.outputs {
        let from = model
            .producer(out)
            .and_then(|p| owner.get(&p))
            .ok_or_else(|| SplitError::Dangling(out.clone()))?;
        routes
            .entry(from.clone())
            .or_default()
            .entry(out.clone())
            .or_default()
            .insert(Destination::Orchestrator);
    }
    let mut specs = BTreeMap::new();
    for agent in &agents {
        let keys: Vec<String> = nodes_of
            .get(agent)
            .into_iter()
            .flatten()
            .filter_map(|&n| {
                model.nodes[n]
                    .outputs
                    .iter()
                    .find(|o| !o.is_empty())
                    .cloned()
            })
            .collect();
        let inputs = receives
            .get(agent)
            .into_iter()
            .flatten()
            .map(|t| spec_of(model, t))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = routes
            .get(agent)
            .into_iter()
            .flatten()
            .map(|(t, to)| {
                Ok(OutputRoute {
                    tensor: spec_of(model, t)?,
                    to: to.iter().cloned().collect(),
                })
            })
            .collect::<Result<Vec<_>, SplitError>>()?;
        let activation_bytes = inputs
            .iter()
            .chain(outputs.iter().map(|o| &o.tensor))
            .map(|t| t.elements() * 4)
            .sum();
        specs.insert(
            agent.clone(),
            SubgraphSpec {
                epoch,
                model: model.name.clone(),
                model_sha256: sha256,
                weight_bytes: weight_bytes(&keys),
                nodes: keys,
                inputs,
                outputs,
                activation_bytes,
                predicted_ms,
            },
        );
    }
    let inputs = input_readers
        .into_iter()
        .map(|(t, readers)| Ok((spec_of(model, &t)?, readers.into_iter().collect())))
        .collect::<Result<Vec<_>, SplitError>>()?;
    let outputs = model
        .outputs
        .iter()
        .map(|t| spec_of(model, t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Split {
        specs,
        inputs,
        outputs,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use moirai_core::wire::data::Destination;

    use crate::loaded::LoadedModel;
    use crate::submodel;

    fn tiny() -> LoadedModel {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/onnx/tiny-cnn/model.onnx");
        LoadedModel::load(&p).expect("the tiny-cnn fixture loads")
    }

    #[test]
    fn a_tensor_of_a_type_that_cannot_travel_is_refused_at_planning_time_by_name() {
        use crate::import::onnx::{build::ModelBuilder, from_proto, ImportOptions};
        use moirai_core::kernel::{AttrValue, DType};
        // x -> Cast(double) -> y -> Cast(float): a double has no TensorValue, so the model
        // is refused when it is planned (imported), naming the tensor and its type.
        let to = |t: i64| [("to", AttrValue::Int(t))];
        let proto = ModelBuilder::new("f64")
            .input("x", DType::F32, &[1, 4])
            .node_with("Cast", &["x"], &["y"], &to(11))
            .node_with("Cast", &["y"], &["z"], &to(1))
            .output("z", DType::F32, &[1, 4])
            .proto();
        let e = from_proto(&proto, Path::new("f64.onnx"), &ImportOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("tensor `y` has element type F64"), "{msg}");
    }

    /// Groups in topological order cut into `k` consecutive stages, stage `i` on agent `i`.
    fn stages(m: &LoadedModel, k: usize) -> std::collections::BTreeMap<String, String> {
        let n = m.coarse.groups.len();
        m.coarse
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g.name.clone(), ["a", "b", "c"][i * k / n].to_string()))
            .collect()
    }

    #[test]
    fn shares_that_feed_each_other_both_ways_are_refused_naming_the_cycle() {
        let m = tiny();
        // Groups alternate between two agents: a's share would wait for b's, which waits
        // for a's.
        let alternate: std::collections::BTreeMap<String, String> = m
            .coarse
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g.name.clone(), ["a", "b"][i % 2].to_string()))
            .collect();
        let cycle = super::share_cycle(&m.coarse, &alternate).expect("a cycle");
        assert_eq!(cycle.first(), cycle.last(), "{cycle:?}");
        assert!(cycle.len() >= 3, "{cycle:?}");
        let e = super::split(&m.onnx, &m.coarse, &alternate, 1, m.sha256, 1.0, |n| {
            m.weight_bytes(n)
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("a -> b -> a") || e.to_string().contains("b -> a -> b"),
            "{e}"
        );
        // Consecutive stages never form one.
        assert_eq!(super::share_cycle(&m.coarse, &stages(&m, 3)), None);
    }

    #[test]
    fn every_node_runs_on_exactly_one_agent_and_every_received_tensor_has_a_sender() {
        let m = tiny();
        // Three consecutive stages: every agent receives and sends.
        let placement = stages(&m, 3);
        let s = super::split(&m.onnx, &m.coarse, &placement, 1, m.sha256, 1.0, |n| {
            m.weight_bytes(n)
        })
        .unwrap();
        let folded: BTreeSet<usize> = m
            .coarse
            .groups
            .iter()
            .flat_map(|g| g.folded.clone())
            .collect();
        let key = |n: usize| m.onnx.nodes[n].outputs[0].clone();
        for n in (0..m.onnx.nodes.len()).filter(|n| !folded.contains(n)) {
            let on: Vec<&String> = s
                .specs
                .iter()
                .filter(|(_, spec)| spec.nodes.contains(&key(n)))
                .map(|(a, _)| a)
                .collect();
            assert_eq!(on.len(), 1, "node {} runs on {on:?}", key(n));
        }
        for (agent, spec) in &s.specs {
            for t in &spec.inputs {
                let from_orch = s
                    .inputs
                    .iter()
                    .any(|(i, r)| i.name == t.name && r.contains(agent));
                let from_peer = s.specs.values().any(|p| {
                    p.outputs.iter().any(|o| {
                        o.tensor.name == t.name
                            && o.to
                                .iter()
                                .any(|d| matches!(d, Destination::Agent(a) if a.as_str() == agent))
                    })
                });
                assert!(
                    from_orch ^ from_peer,
                    "{agent} receives {} from nobody or twice",
                    t.name
                );
            }
            // Each share cuts into a standalone model with only its own weights.
            let sub = submodel::extract(m.proto(), spec).expect("the share cuts out");
            let weights: u64 = sub
                .graph
                .as_ref()
                .map(|g| g.initializer.iter().map(submodel::tensor_bytes).sum())
                .unwrap_or(0);
            assert_eq!(weights, spec.weight_bytes, "{agent}");
        }
        let total: u64 = s.specs.values().map(|p| p.weight_bytes).sum();
        assert_eq!(
            total,
            m.weight_bytes(
                &m.onnx
                    .nodes
                    .iter()
                    .map(|n| n.outputs[0].clone())
                    .collect::<Vec<_>>()
            )
        );
        assert_eq!(s.outputs.len(), 1);
        assert!(s.specs.values().any(|p| p
            .outputs
            .iter()
            .any(|o| o.to.contains(&Destination::Orchestrator))));
    }

    #[test]
    fn a_node_name_the_model_lacks_is_refused_by_name() {
        let m = tiny();
        let spec = moirai_core::wire::data::SubgraphSpec {
            epoch: 1,
            model: "tiny".into(),
            model_sha256: m.sha256,
            nodes: vec!["no-such-tensor".into()],
            inputs: vec![],
            outputs: vec![],
            weight_bytes: 0,
            activation_bytes: 0,
            predicted_ms: 0.0,
        };
        let e = submodel::extract(m.proto(), &spec).unwrap_err().to_string();
        assert!(e.contains("no-such-tensor"), "{e}");
    }
}
