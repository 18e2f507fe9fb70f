//! `/metrics` and the stats page, rendered once per published view. At the
//! largest accepted config the metrics are about 30 MB and the page 10 MB:
//! rendered per request, on a blocking thread each, a burst of scrapes (they
//! need no token) would hold one copy per connection. Here one render runs
//! at a time, off the async thread, and every request for the same view
//! shares its bytes.
use std::sync::Arc;

use axum::{body::Bytes, http::StatusCode};
use tokio::sync::Mutex;

use super::{error::ApiError, view::Stats};

/// The last rendering of one kind, and the view it was made from.
#[derive(Default)]
pub struct Rendered {
    last: Mutex<Option<(Arc<Stats>, Bytes)>>,
}

/// Both kinds.
#[derive(Default)]
pub struct Renders {
    pub metrics: Rendered,
    pub page: Rendered,
}

impl Rendered {
    /// `render(view)`, or what it gave for this very view before.
    pub async fn get(
        &self,
        view: Arc<Stats>,
        render: impl FnOnce(&Stats) -> String + Send + 'static,
    ) -> Result<Bytes, ApiError> {
        // Held across the render: a second request for the same view waits
        // for the first one's bytes instead of rendering them again.
        let mut last = self.last.lock().await;
        if let Some((seen, bytes)) = last.as_ref()
            && Arc::ptr_eq(seen, &view)
        {
            return Ok(bytes.clone());
        }
        let for_render = Arc::clone(&view);
        let bytes =
            tokio::task::spawn_blocking(move || Bytes::from(render(&for_render))).await.map_err(
                |e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("rendering: {e}")),
            )?;
        *last = Some((view, bytes.clone()));
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn one_render_per_view() {
        let rendered = Rendered::default();
        let renders = Arc::new(AtomicUsize::new(0));
        let count = |renders: &Arc<AtomicUsize>| {
            let renders = Arc::clone(renders);
            move |_: &Stats| {
                renders.fetch_add(1, Ordering::Relaxed);
                "body".to_owned()
            }
        };
        let view = Arc::new(Stats::default());
        for _ in 0..3 {
            let body = rendered.get(Arc::clone(&view), count(&renders)).await.unwrap();
            assert_eq!(&body[..], b"body");
        }
        assert_eq!(renders.load(Ordering::Relaxed), 1, "one view, one render");
        rendered.get(Arc::new(Stats::default()), count(&renders)).await.unwrap();
        assert_eq!(renders.load(Ordering::Relaxed), 2, "a new view is rendered anew");
    }
}
