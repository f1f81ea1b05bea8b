//! Flow and source calls: create or replace, read, list (a paging stream), delete.

use futures::StreamExt;
use futures::stream::BoxStream;
use reqwest::Method;
use serde::Deserialize;

use super::FlowProvider;
use super::error::{ClientError, ClientResult};
use crate::store::{Flow, FlowId, Format, PutOutcome, Source, SourceId};
use crate::time::TimeRange;

/// A flow as the service reports it: the resource and the extent of its grains.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct FlowInfo {
    /// The resource.
    #[serde(flatten)]
    pub flow: Flow,
    /// From the first grain's origin timestamp to the end of the last grain; empty (`()`)
    /// when the flow has no grains.
    pub timerange: TimeRange,
}

/// Filters and page size of a flow listing (`GET /flows`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowQuery {
    /// Only flows of this source.
    pub source_id: Option<SourceId>,
    /// Only flows of this format.
    pub format: Option<Format>,
    /// Only flows with this label.
    pub label: Option<String>,
    /// Only flows with these tag values (`tag.NAME=VALUE`).
    pub tags: Vec<(String, String)>,
    /// Only flows with grains overlapping this range.
    pub timerange: Option<TimeRange>,
    /// Flows per page (the server's default when absent).
    pub page_size: Option<u32>,
}

impl FlowQuery {
    fn pairs(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        if let Some(source) = self.source_id {
            pairs.push(("source_id".into(), source.to_string()));
        }
        if let Some(format) = self.format {
            pairs.push(("format".into(), format.as_urn().into()));
        }
        if let Some(label) = &self.label {
            pairs.push(("label".into(), label.clone()));
        }
        for (name, value) in &self.tags {
            pairs.push((format!("tag.{name}"), value.clone()));
        }
        if let Some(range) = &self.timerange {
            pairs.push(("timerange".into(), range.to_string()));
        }
        if let Some(limit) = self.page_size {
            pairs.push(("limit".into(), limit.to_string()));
        }
        pairs
    }
}

impl FlowProvider {
    /// Creates the flow, or replaces it (and its source, implicitly created), and returns
    /// it as stored.
    pub async fn create_flow(&self, flow: &Flow) -> ClientResult<FlowInfo> {
        self.put_flow(flow).await?;
        self.flow(flow.id).await
    }

    /// `PUT /flows/{id}`: creates the flow or replaces its resource.
    pub async fn put_flow(&self, flow: &Flow) -> ClientResult<PutOutcome> {
        let conn = self.connection()?;
        let path = format!("flows/{}", flow.id);
        let response = conn
            .send(|| Ok(conn.request(Method::PUT, &path)?.json(flow)))
            .await?;
        Ok(match response.status().as_u16() {
            201 => PutOutcome::Created,
            _ => PutOutcome::Updated,
        })
    }

    /// `GET /flows/{id}`; a 404 is [`ClientError::Problem`] with
    /// [`is_not_found`](ClientError::is_not_found).
    pub async fn flow(&self, id: FlowId) -> ClientResult<FlowInfo> {
        let conn = self.connection()?;
        let path = format!("flows/{id}");
        let response = conn.send(|| conn.request(Method::GET, &path)).await?;
        json(response).await
    }

    /// `GET /flows/{id}`, `None` for an unknown flow.
    pub async fn find_flow(&self, id: FlowId) -> ClientResult<Option<FlowInfo>> {
        match self.flow(id).await {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `DELETE /flows/{id}`: the flow and all its grains.
    pub async fn delete_flow(&self, id: FlowId) -> ClientResult<()> {
        let conn = self.connection()?;
        let path = format!("flows/{id}");
        conn.send(|| conn.request(Method::DELETE, &path)).await?;
        Ok(())
    }

    /// The flows matching `query`, fetched a page at a time as the stream is read,
    /// following the `Link: rel="next"` of each page.
    pub fn flows(&self, query: FlowQuery) -> BoxStream<'static, ClientResult<FlowInfo>> {
        let provider = self.clone();
        pages(provider, "flows", query.pairs())
    }

    /// `GET /sources/{id}`.
    pub async fn source(&self, id: SourceId) -> ClientResult<Source> {
        let conn = self.connection()?;
        let path = format!("sources/{id}");
        let response = conn.send(|| conn.request(Method::GET, &path)).await?;
        json(response).await
    }

    /// Every source, a page at a time.
    pub fn sources(&self) -> BoxStream<'static, ClientResult<Source>> {
        pages(self.clone(), "sources", Vec::new())
    }
}

/// The items of a paged listing.
fn pages<T: serde::de::DeserializeOwned + Send + 'static>(
    provider: FlowProvider,
    path: &'static str,
    query: Vec<(String, String)>,
) -> BoxStream<'static, ClientResult<T>> {
    enum Next {
        First(Vec<(String, String)>),
        Link(String),
        Done,
    }
    futures::stream::unfold(Next::First(query), move |next| {
        let provider = provider.clone();
        async move {
            let (path, query) = match next {
                Next::First(query) => (path.to_owned(), query),
                Next::Link(link) => (link, Vec::new()),
                Next::Done => return None,
            };
            let page = async {
                let conn = provider.connection()?;
                let response = conn
                    .send(|| conn.request_with(Method::GET, &path, &query))
                    .await?;
                let next = response
                    .headers()
                    .get_all(reqwest::header::LINK)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(next_link);
                let items: Vec<T> = json(response).await?;
                Ok::<_, ClientError>((items, next))
            }
            .await;
            Some(match page {
                Ok((items, next)) => {
                    let next = match next {
                        Some(link) if !items.is_empty() => Next::Link(link),
                        _ => Next::Done,
                    };
                    (
                        futures::stream::iter(items.into_iter().map(Ok)).boxed(),
                        next,
                    )
                }
                Err(e) => (futures::stream::once(async { Err(e) }).boxed(), Next::Done),
            })
        }
    })
    .flatten()
    .boxed()
}

/// The target of a `rel="next"` link in a `Link` header value.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then(|| target.to_owned())
    })
}

/// Reads a JSON response body.
pub(crate) async fn json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> ClientResult<T> {
    let url = response.url().path().to_owned();
    let body = response.bytes().await?;
    serde_json::from_slice(&body).map_err(|e| {
        ClientError::Protocol(format!("the body of {url} is not what was expected: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::next_link;

    #[test]
    fn finds_the_next_link() {
        assert_eq!(
            next_link("</flows?limit=2&page=abc>; rel=\"next\"").as_deref(),
            Some("/flows?limit=2&page=abc")
        );
        assert_eq!(
            next_link("</a>; rel=\"prev\", </b>; rel=\"next\"").as_deref(),
            Some("/b")
        );
        assert_eq!(next_link("</a>; rel=\"prev\""), None);
    }
}
