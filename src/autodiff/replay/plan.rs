//! From a recorded graph to a program (`compile`): which nodes are replayed, their
//! roles and slots, and where a product with its bias and activation, or softmax
//! cross-entropy, becomes one fused step.

use super::*;

/// What a recorded node is to a trace: computed by it, or given to it each step.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Role {
    Computed,
    Param,
    Input,
}

/// Each node's role; an error for an input that is a parameter, another input, or not a
/// variable.
pub(super) fn roles<T: Element>(
    nodes: &[Node<T>],
    params: &[u32],
    inputs: &[u32],
) -> Result<Vec<Role>> {
    let mut role = vec![Role::Computed; nodes.len()];
    for &p in params {
        role[p as usize] = Role::Param;
    }
    for (k, &i) in inputs.iter().enumerate() {
        if role[i as usize] != Role::Computed {
            return Err(Error::invalid(
                "Trace::record",
                format!("input {k} is also a parameter or another input"),
            ));
        }
        if !matches!(nodes[i as usize].op, Op::Leaf) {
            return Err(Error::invalid(
                "Trace::record",
                format!(
                    "input {k} is not a variable made with Tape::var, so the ops that depend on it were not recorded"
                ),
            ));
        }
        role[i as usize] = Role::Input;
    }
    Ok(role)
}

/// The nodes the output depends on: only they are replayed.
pub(super) fn reachable<T: Element>(nodes: &[Node<T>], out: u32) -> Vec<bool> {
    let n = nodes.len();
    let mut reached = vec![false; n];
    reached[out as usize] = true;
    for i in (0..n).rev() {
        if reached[i] {
            for &j in &nodes[i].inputs {
                reached[j as usize] = true;
            }
        }
    }
    reached
}

/// How many reached nodes use each node, and the last of them.
pub(super) fn consumers<T: Element>(nodes: &[Node<T>], reached: &[bool]) -> (Vec<u32>, Vec<u32>) {
    let n = nodes.len();
    let mut uses = vec![0u32; n];
    let mut consumer = vec![u32::MAX; n];
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| reached[*i]) {
        for &j in &node.inputs {
            uses[j as usize] += 1;
            consumer[j as usize] = i as u32;
        }
    }
    (uses, consumer)
}

/// Index slots, which follow the recording order of gathers and row selections: each
/// node's slot (`usize::MAX` for none) and each slot's length.
pub(super) fn index_slots<T: Element>(
    nodes: &[Node<T>],
    reached: &[bool],
) -> (Vec<usize>, Vec<usize>) {
    let n = nodes.len();
    let mut index_slot = vec![usize::MAX; n];
    let mut index_lens = Vec::new();
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| reached[*i]) {
        match &node.op {
            Op::Gather { index, .. } => {
                index_slot[i] = index_lens.len();
                index_lens.push(index.len());
            }
            Op::IndexSelect { indices, .. } => {
                index_slot[i] = index_lens.len();
                index_lens.push(indices.len());
            }
            _ => {}
        }
    }
    (index_slot, index_lens)
}

/// For each step, the parameters (by position in `params`) whose gradient is complete
/// once the backward sweep has passed it: their first consumer.
pub(super) fn completion<T: Element>(
    steps: &[Step<T>],
    params: &[u32],
    n: usize,
) -> Vec<SmallVec<[usize; 2]>> {
    let mut first_use = vec![usize::MAX; n];
    for (s, step) in steps.iter().enumerate() {
        let used: SmallVec<[u32; 4]> = match step {
            Step::Dense(d) => [d.x, d.w, d.b].into_iter().collect(),
            Step::CrossEntropy(ce) => [ce.z].into_iter().collect(),
            Step::Op { inputs, .. } => inputs.iter().copied().collect(),
        };
        for j in used {
            first_use[j as usize] = first_use[j as usize].min(s);
        }
    }
    let mut complete_after = vec![SmallVec::new(); steps.len()];
    for (k, &p) in params.iter().enumerate() {
        if let Some(list) = complete_after.get_mut(first_use[p as usize]) {
            list.push(k);
        }
    }
    complete_after
}

/// Builds the program from the recorded nodes `0..=out`.
pub(super) fn compile<T: Element>(
    nodes: &[Node<T>],
    out: u32,
    params: &[u32],
    inputs: &[u32],
) -> Result<Trace<T>> {
    let n = nodes.len();
    if nodes[out as usize].value.len() != 1 {
        return Err(Error::invalid(
            "Trace::record",
            format!(
                "the output must hold one element, got shape {:?}",
                nodes[out as usize].value.shape()
            ),
        ));
    }
    let role = roles(nodes, params, inputs)?;
    let reached = reachable(nodes, out);
    let (uses, consumer) = consumers(nodes, &reached);
    let only_consumer = |j: u32| -> Option<usize> {
        (uses[j as usize] == 1 && j != out).then(|| consumer[j as usize] as usize)
    };
    let (index_slot, index_lens) = index_slots(nodes, &reached);
    let mut needs = vec![false; n];
    let mut constants: Vec<Option<Tensor<T>>> = vec![None; n];
    let mut absorbed = vec![false; n];
    let mut steps = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        if absorbed[i] || !reached[i] {
            continue;
        }
        match role[i] {
            Role::Param => {
                needs[i] = node.requires_grad && matches!(node.op, Op::Leaf);
                continue;
            }
            Role::Input => continue,
            Role::Computed => {}
        }
        match &node.op {
            Op::Leaf => {
                return Err(Error::invalid(
                    "Trace::record",
                    format!("leaf node {i} is neither a parameter nor an input"),
                ));
            }
            Op::Constant => {
                constants[i] = Some(node.value.clone());
                continue;
            }
            Op::Where(_) | Op::Custom(_) => {
                return Err(Error::invalid(
                    "Trace::record",
                    format!(
                        "node {i} ({}) cannot be replayed; run this step on the tape",
                        node.op.name()
                    ),
                ));
            }
            _ => {}
        }
        if let Some((d, parts)) = dense_at(nodes, i, &only_consumer) {
            needs[d.out as usize] = [d.x, d.w, d.b].iter().any(|&j| needs[j as usize]);
            for k in parts {
                absorbed[k] = true;
            }
            steps.push(Step::Dense(Box::new(d)));
            continue;
        }
        if let Some((ce, parts)) = cross_entropy_at(nodes, i, &only_consumer, &index_slot) {
            needs[ce.out as usize] = needs[ce.z as usize];
            for k in parts {
                absorbed[k] = true;
            }
            steps.push(Step::CrossEntropy(Box::new(ce)));
            continue;
        }
        needs[i] = node.inputs.iter().any(|&j| needs[j as usize]);
        steps.push(Step::Op {
            op: node.op.clone(),
            inputs: node.inputs.iter().copied().collect(),
            out: i as u32,
            shape: Shape::from_slice(node.value.shape()),
            index_slot: (index_slot[i] != usize::MAX).then_some(index_slot[i]),
        });
    }
    let complete_after = completion(&steps, params, n);
    Ok(Trace {
        complete_after,
        steps,
        values: constants,
        grads: vec![None; n],
        has_grad: vec![false; n],
        needs,
        params: params
            .iter()
            .map(|&p| (p, Shape::from_slice(nodes[p as usize].value.shape())))
            .collect(),
        inputs: inputs
            .iter()
            .map(|&p| (p, Shape::from_slice(nodes[p as usize].value.shape())))
            .collect(),
        index_lens,
        output: out,
        ready: false,
    })
}

/// `matmul(x, W)` or `matmul(x, Wᵀ)` (2-D, `W` read in place) at `i`, used once, by `add(·, b)` with `b` `[n]`, optionally
/// followed by its only consumer relu, tanh or sigmoid.
pub(super) fn dense_at<T: Element>(
    nodes: &[Node<T>],
    i: usize,
    only_consumer: &impl Fn(u32) -> Option<usize>,
) -> Option<(Dense<T>, Vec<usize>)> {
    let node = &nodes[i];
    let Op::MatMul {
        ta: false,
        tb: w_transposed,
    } = node.op
    else {
        return None;
    };
    let (x, w) = (node.inputs[0], node.inputs[1]);
    let (xs, ws) = (
        nodes[x as usize].value.shape(),
        nodes[w as usize].value.shape(),
    );
    if xs.len() != 2 || ws.len() != 2 {
        return None;
    }
    let (m, k, n) = if w_transposed {
        (xs[0], xs[1], ws[0])
    } else {
        (xs[0], xs[1], ws[1])
    };
    let a = only_consumer(i as u32)?;
    let add = &nodes[a];
    if !matches!(add.op, Op::Binary(BinaryOp::Add)) || add.inputs[0] != i as u32 {
        return None;
    }
    let b = add.inputs[1];
    if nodes[b as usize].value.shape() != [n] || b as usize == i {
        return None;
    }
    let act = only_consumer(a as u32).and_then(|u| match nodes[u].op {
        Op::Unary(op @ (UnaryOp::Relu | UnaryOp::Tanh | UnaryOp::Sigmoid)) => Some((u, op)),
        _ => None,
    });
    let (out, act) = match act {
        Some((u, op)) => (u as u32, Some(op)),
        None => (a as u32, None),
    };
    let parts = vec![i, a, out as usize];
    let dense = Dense {
        x,
        w,
        w_transposed,
        b,
        act,
        out,
        m,
        k,
        n,
        pre: Tensor::zeroed(&[0]),
        g_pre: Tensor::zeroed(&[0]),
    };
    Some((dense, parts))
}

/// `mean(logsumexp(z, [1]) − reshape(gather(z, 1, labels)))` starting at the logsumexp
/// node `i` (the recording order of `nn::cross_entropy`).
pub(super) fn cross_entropy_at<T: Element>(
    nodes: &[Node<T>],
    i: usize,
    only_consumer: &impl Fn(u32) -> Option<usize>,
    index_slot: &[usize],
) -> Option<(CrossEntropy<T>, Vec<usize>)> {
    let Op::LogSumExp { axes } = &nodes[i].op else {
        return None;
    };
    let z = nodes[i].inputs[0];
    let zs = nodes[z as usize].value.shape();
    if axes.as_ref() != [1] || zs.len() != 2 {
        return None;
    }
    let (m, c) = (zs[0], zs[1]);
    let d = only_consumer(i as u32)?;
    if !matches!(nodes[d].op, Op::Binary(BinaryOp::Sub)) || nodes[d].inputs[0] != i as u32 {
        return None;
    }
    let r = nodes[d].inputs[1] as usize;
    if !matches!(nodes[r].op, Op::Reshape) || only_consumer(r as u32) != Some(d) {
        return None;
    }
    let g = nodes[r].inputs[0] as usize;
    match &nodes[g].op {
        Op::Gather { axis: 1, .. } if nodes[g].inputs[0] == z => {}
        _ => return None,
    }
    if only_consumer(g as u32) != Some(r) || nodes[g].value.shape() != [m, 1] {
        return None;
    }
    let mean = only_consumer(d as u32)?;
    match &nodes[mean].op {
        Op::Mean { axes } if axes.as_ref() == [0] && nodes[d].value.shape() == [m] => {}
        _ => return None,
    }
    let ce = CrossEntropy {
        z,
        out: mean as u32,
        index_slot: index_slot[g],
        labels: Vec::new(),
        m,
        c,
        probs: Tensor::zeroed(&[0]),
    };
    Some((ce, vec![i, g, r, d, mean]))
}
