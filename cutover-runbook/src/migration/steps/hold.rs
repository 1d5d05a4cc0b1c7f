//! The hold phase: the rollback window. The old database follows the new one (reverse
//! replication), so `cutover rollback` loses nothing until `finish` cuts it.

use std::time::Duration;

use cutover_core::journal::now_ms;
use cutover_core::Plan;

use crate::migration::step::{Cx, Fut, Step};
use crate::migration::Phase;

pub(crate) struct Window;

impl Step for Window {
    fn phase(&self) -> Phase {
        Phase::Hold
    }
    fn name(&self) -> &'static str {
        "window"
    }
    fn does(&self, plan: &Plan) -> String {
        format!(
            "hold the rollback window of {} from the moment the move was done, with the old database following the new one",
            humantime::format_duration(plan.migration.hold)
        )
    }
    fn changes(&self, _plan: &Plan) -> String {
        "nothing".into()
    }
    fn act<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            let hold = cx.plan.migration.hold;
            let start = *cx.state.lock().unwrap().done_ms.get_or_insert(now_ms());
            let end = start + hold.as_millis() as i64;
            let every = (hold / 20).clamp(Duration::from_secs(1), Duration::from_secs(600));
            let mut last = 0i64;
            loop {
                let left = end - now_ms();
                if left <= 0 {
                    return Ok(format!(
                        "the rollback window of {} is over",
                        humantime::format_duration(hold)
                    ));
                }
                if last == 0 || last - left >= every.as_millis() as i64 {
                    last = left;
                    cx.progress(format!(
                        "rollback window: {} left; `cutover rollback` goes back losing nothing",
                        humantime::format_duration(Duration::from_secs(
                            (left as u64).div_ceil(1000)
                        ))
                    ));
                }
                tokio::time::sleep(Duration::from_millis(left.clamp(1, 1000) as u64)).await;
            }
        })
    }
}
