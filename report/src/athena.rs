//! Reports on Athena: start the query, poll until it finishes, page through the results.
//!
//! `StartQueryExecution` in the configured workgroup and database (the Glue table
//! `events` from `infra/`), then `GetQueryExecution` while the query is QUEUED or RUNNING,
//! spaced by the core's [`RetryPolicy`] (from `poll_initial_ms` doubling to `poll_max_ms`,
//! jittered, until `query_timeout_secs`), then `GetQueryResults` page by page. A FAILED or CANCELLED
//! query is reported with Athena's own reason. The first row of the first page is
//! Athena's header row and is dropped.

use std::time::{Duration, Instant};

use allot_core::RetryPolicy;
use aws_sdk_athena::error::DisplayErrorContext;
use aws_sdk_athena::types::{QueryExecutionContext, QueryExecutionState, ResultConfiguration};

use crate::table::{ColumnKind, ResultTable};
use allot_archive::{ArchiveConfig, AthenaConfig};

use crate::ReportError;

/// A finished Athena query: its id, the states polling saw, and its rows.
#[derive(Debug, Clone)]
pub struct QueryOutcome {
    pub query_id: String,
    /// Every state `GetQueryExecution` reported, in order (e.g. QUEUED, RUNNING, SUCCEEDED).
    pub states: Vec<String>,
    /// How many `GetQueryResults` pages were read.
    pub pages: usize,
    pub table: ResultTable,
}

/// Runs `sql` on Athena and collects every result row.
pub async fn query(cfg: &ArchiveConfig, sql: &str) -> Result<ResultTable, ReportError> {
    Ok(execute(cfg, sql).await?.table)
}

/// Runs `sql` on Athena, with what it took to get the result.
pub async fn execute(cfg: &ArchiveConfig, sql: &str) -> Result<QueryOutcome, ReportError> {
    let athena =
        cfg.athena.as_ref().ok_or_else(|| ReportError::Config("the athena engine needs an `athena` section".into()))?;
    let region = athena.region.as_deref().unwrap_or(&cfg.region);
    let sdk = cfg.sdk_config(athena.endpoint.as_deref(), region).await;
    let client = aws_sdk_athena::Client::new(&sdk);
    let query_id = start(&client, athena, sql).await?;
    let states = wait(&client, athena, &query_id).await?;
    let (table, pages) = results(&client, athena, &query_id).await?;
    Ok(QueryOutcome { query_id, states, pages, table })
}

fn api_error<E: std::error::Error>(call: &str) -> impl Fn(E) -> ReportError + '_ {
    move |e| ReportError::Athena(format!("{call}: {}", DisplayErrorContext(&e)))
}

async fn start(client: &aws_sdk_athena::Client, athena: &AthenaConfig, sql: &str) -> Result<String, ReportError> {
    let out = client
        .start_query_execution()
        .query_string(sql)
        .work_group(&athena.workgroup)
        .query_execution_context(QueryExecutionContext::builder().database(&athena.database).build())
        .set_result_configuration(
            athena.output_location.as_ref().map(|o| ResultConfiguration::builder().output_location(o).build()),
        )
        .send()
        .await
        .map_err(api_error("StartQueryExecution"))?;
    out.query_execution_id()
        .map(str::to_string)
        .ok_or_else(|| ReportError::Athena("StartQueryExecution returned no query id".into()))
}

/// How polls of a running query are spaced. No retry count: `query_timeout_secs` ends
/// the wait. The jitter keeps concurrent reports from polling (and meeting Athena's API
/// rate limit) in step.
fn poll_policy(athena: &AthenaConfig) -> RetryPolicy {
    let max = Duration::from_millis(athena.poll_max_ms.max(1));
    RetryPolicy::new(Duration::from_millis(athena.poll_initial_ms.max(1)).min(max), max)
}

/// Polls until the query succeeded; any other final state is an error with its reason.
async fn wait(client: &aws_sdk_athena::Client, athena: &AthenaConfig, id: &str) -> Result<Vec<String>, ReportError> {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut polls = poll_policy(athena).start();
    loop {
        let out =
            client.get_query_execution().query_execution_id(id).send().await.map_err(api_error("GetQueryExecution"))?;
        let status = out.query_execution().and_then(|q| q.status());
        let state = status.and_then(|s| s.state()).cloned();
        seen.push(state.as_ref().map_or("UNKNOWN", |s| s.as_str()).to_string());
        match state {
            Some(QueryExecutionState::Succeeded) => return Ok(seen),
            Some(QueryExecutionState::Queued | QueryExecutionState::Running) | None => {}
            Some(other) => {
                let reason = status
                    .and_then(|s| s.athena_error().and_then(|e| e.error_message()).or(s.state_change_reason()))
                    .unwrap_or("no reason given")
                    .to_string();
                return Err(ReportError::QueryFailed {
                    query_id: id.to_string(),
                    state: other.as_str().to_string(),
                    reason,
                });
            }
        }
        if started.elapsed() >= Duration::from_secs(athena.query_timeout_secs) {
            // Best effort: do not leave a runaway query scanning (and billing) behind.
            let _ = client.stop_query_execution().query_execution_id(id).send().await;
            return Err(ReportError::Athena(format!(
                "query {id} did not finish within {} s; stopped it",
                athena.query_timeout_secs
            )));
        }
        // The policy has no retry limit, so there is always a next wait.
        let delay = polls.next(rand::random()).unwrap_or(polls.policy().max);
        tokio::time::sleep(delay).await;
    }
}

fn kind_of(athena_type: &str) -> ColumnKind {
    match athena_type.to_ascii_lowercase().as_str() {
        "tinyint" | "smallint" | "integer" | "int" | "bigint" => ColumnKind::Integer,
        "double" | "float" | "real" => ColumnKind::Float,
        t if t.starts_with("decimal") => ColumnKind::Float,
        _ => ColumnKind::Text,
    }
}

async fn results(
    client: &aws_sdk_athena::Client,
    athena: &AthenaConfig,
    id: &str,
) -> Result<(ResultTable, usize), ReportError> {
    let mut table = ResultTable::default();
    let mut pages = 0;
    let mut token: Option<String> = None;
    let mut first_page = true;
    loop {
        let out = client
            .get_query_results()
            .query_execution_id(id)
            .max_results(athena.page_size)
            .set_next_token(token.take())
            .send()
            .await
            .map_err(api_error("GetQueryResults"))?;
        pages += 1;
        let Some(set) = out.result_set() else { break };
        if first_page && let Some(meta) = set.result_set_metadata() {
            table.columns = meta.column_info().iter().map(|c| (c.name().to_string(), kind_of(c.r#type()))).collect();
        }
        let mut rows = set.rows().iter().map(|r| r.data().iter().map(|d| d.var_char_value().map(str::to_string)));
        if first_page {
            let names: Vec<Option<String>> = table.columns.iter().map(|(n, _)| Some(n.clone())).collect();
            let mut rest: Vec<Vec<Option<String>>> = rows.by_ref().map(Iterator::collect).collect();
            if rest.first() == Some(&names) {
                rest.remove(0);
            }
            table.rows.extend(rest);
        } else {
            table.rows.extend(rows.map(Iterator::collect));
        }
        first_page = false;
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok((table, pages))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn athena(poll_initial_ms: u64, poll_max_ms: u64) -> AthenaConfig {
        serde_json::from_value(serde_json::json!({"poll_initial_ms": poll_initial_ms, "poll_max_ms": poll_max_ms}))
            .expect("an athena section")
    }

    #[test]
    fn polls_double_from_the_initial_interval_to_the_maximum() {
        let policy = poll_policy(&athena(250, 5_000));
        let ceilings: Vec<u128> = (0..7).map(|a| policy.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [250, 500, 1_000, 2_000, 4_000, 5_000, 5_000]);
        assert_eq!(policy.max_retries, None, "the query timeout ends the wait, not a count");
        let mut polls = policy.start();
        assert_eq!(polls.next(0.0), Some(Duration::from_millis(125)), "jittered down to half the ceiling");
        assert_eq!(polls.next(0.5), Some(Duration::from_millis(375)));
    }

    #[test]
    fn odd_intervals_are_tamed() {
        let policy = poll_policy(&athena(0, 0));
        assert_eq!((policy.initial, policy.max), (Duration::from_millis(1), Duration::from_millis(1)));
        let policy = poll_policy(&athena(900, 300));
        assert_eq!(policy.ceiling(0), Duration::from_millis(300), "the initial interval is capped too");
    }
}
