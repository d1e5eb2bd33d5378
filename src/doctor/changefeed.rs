//! The TiCDC hop: the changefeed exists and replicates; its checkpoint lag.

use super::{broken, Broken};
use crate::clock::now_millis;
use crate::ticdc::{self, ChangefeedArgs};

/// The changefeed exists and replicates; its checkpoint lag.
pub(super) async fn changefeed(args: &ChangefeedArgs) -> Result<String, Broken> {
    let id = &args.changefeed_id;
    let server = &args.ticdc_url;
    let info = match ticdc::changefeed(args).await {
        Ok(Some(info)) => info,
        Ok(None) => {
            return Err(broken(
                format!("changefeed {id} does not exist on TiCDC {server}"),
                "create it: `cdc-monitor changefeed ensure` (same CDC_TICDC_* and CDC_CHANGEFEED_* settings)",
            ))
        }
        Err(e) => {
            return Err(broken(
                format!("TiCDC {server}: {e}"),
                "check CDC_TICDC_URL and that TiCDC runs: `curl $CDC_TICDC_URL/api/v2/health`",
            ))
        }
    };
    if !matches!(info.state.as_str(), "normal" | "") {
        let error = info.error.map(|e| format!(": {e}")).unwrap_or_default();
        return Err(broken(
            format!("changefeed {id} is {}{error}", info.state),
            format!("fix the cause TiCDC names, then `cdc cli changefeed resume --server={server} --changefeed-id={id}`"),
        ));
    }
    // A TSO's high bits are its physical time in milliseconds.
    let lag = info.checkpoint_tso.map(|tso| {
        let ms = i64::try_from(tso >> 18).unwrap_or(i64::MAX);
        (now_millis() - ms).max(0) as f64 / 1000.0
    });
    Ok(match lag {
        Some(lag) => format!("changefeed {id} normal, checkpoint lag {lag:.1}s"),
        None => format!("changefeed {id} normal"),
    })
}
