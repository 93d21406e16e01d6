//! Hessian-vector product of the W1 network's loss (784-256-256-10, batch 128) by
//! forward-over-reverse on the tensor engine, checked against central differences of
//! its gradient: `cargo run --release --example w1_hvp`.

fn main() -> Result<(), chainrule::Error> {
    let batch = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(128);
    let t = std::time::Instant::now();
    let (hv, fd, err) = chainrule::bench::w1_hvp_check(batch)?;
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    println!(
        "W1 loss, batch {batch}: |Hv| = {:.6e}, |difference of gradients| = {:.6e}",
        norm(&hv),
        norm(&fd)
    );
    println!(
        "max |Hv - difference| / max |difference| = {err:.3e} ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
