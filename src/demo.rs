//! `estate-gateway demo` (in progress).
pub async fn run(_duration_s: Option<u64>) -> anyhow::Result<()> {
    anyhow::bail!("demo not built yet")
}
