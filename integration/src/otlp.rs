//! An OTLP trace receiver for tests: it takes what an OpenTelemetry exporter sends, over
//! `http/protobuf` (`POST /v1/traces`) and over gRPC (`TraceService/Export` on HTTP/2), decodes
//! the protobuf and keeps every span, so a test asserts on the spans that really arrived.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// One span as it arrived.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The `service.name` of the process that sent it.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// Its string and integer attributes, as text.
    pub attributes: HashMap<String, String>,
    /// How it arrived: `http` or `grpc`.
    pub protocol: &'static str,
}

/// The receiver; it stops accepting when dropped.
pub struct OtlpReceiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    http_port: u16,
    grpc_port: u16,
    http: actix_web::dev::ServerHandle,
    grpc: Option<tokio::sync::oneshot::Sender<()>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn keep(
    spans: &Mutex<Vec<ReceivedSpan>>,
    request: ExportTraceServiceRequest,
    protocol: &'static str,
) {
    let mut kept = spans
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                kept.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect(),
                    protocol,
                });
            }
        }
    }
}

async fn http_export(
    spans: actix_web::web::Data<Arc<Mutex<Vec<ReceivedSpan>>>>,
    body: Bytes,
) -> actix_web::HttpResponse {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            keep(&spans, request, "http");
            actix_web::HttpResponse::Ok()
                .content_type("application/x-protobuf")
                .body(ExportTraceServiceResponse::default().encode_to_vec())
        }
        Err(e) => actix_web::HttpResponse::BadRequest().body(e.to_string()),
    }
}

/// The messages of a gRPC body: each a compression flag, a 4-byte length and the message.
fn grpc_messages(mut body: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while body.remaining() >= 5 {
        let _compressed = body.get_u8();
        let len = body.get_u32() as usize;
        if body.remaining() < len {
            break;
        }
        out.push(body.split_to(len));
    }
    out
}

async fn grpc_call(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
) -> Result<(), h2::Error> {
    let export =
        request.uri().path() == "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let mut body = request.into_body();
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
    }
    let mut status = if export { "0" } else { "12" }; // OK, or UNIMPLEMENTED
    for message in grpc_messages(buf.freeze()) {
        match ExportTraceServiceRequest::decode(message) {
            Ok(request) => keep(&spans, request, "grpc"),
            Err(_) => status = "3", // INVALID_ARGUMENT
        }
    }
    let response = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .map_err(|_| h2::Error::from(h2::Reason::INTERNAL_ERROR))?;
    let mut send = respond.send_response(response, false)?;
    let reply = ExportTraceServiceResponse::default().encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + reply.len());
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
    framed.extend_from_slice(&reply);
    send.send_data(framed.freeze(), false)?;
    let mut trailers = http::HeaderMap::new();
    trailers.insert(
        "grpc-status",
        http::HeaderValue::from_str(status)
            .map_err(|_| h2::Error::from(h2::Reason::INTERNAL_ERROR))?,
    );
    send.send_trailers(trailers)
}

async fn grpc_serve(
    listener: tokio::net::TcpListener,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let socket = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(_) => continue,
            },
        };
        let spans = spans.clone();
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(socket).await else {
                return;
            };
            while let Some(Ok((request, respond))) = conn.accept().await {
                let spans = spans.clone();
                tokio::spawn(async move {
                    let _ = grpc_call(request, respond, spans).await;
                });
            }
        });
    }
}

impl OtlpReceiver {
    /// Listens on two free loopback ports, one per protocol.
    pub fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let http_listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let grpc_listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let http_port = http_listener.local_addr().expect("bound").port();
        let grpc_port = grpc_listener.local_addr().expect("bound").port();
        grpc_listener.set_nonblocking(true).expect("non-blocking");

        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let http_spans = spans.clone();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let data = actix_web::web::Data::new(http_spans);
                let server = actix_web::HttpServer::new(move || {
                    actix_web::App::new()
                        .app_data(data.clone())
                        .app_data(actix_web::web::PayloadConfig::new(16 * 1024 * 1024))
                        .route("/v1/traces", actix_web::web::post().to(http_export))
                })
                .workers(1)
                .disable_signals()
                .listen(http_listener)
                .expect("listens")
                .run();
                let _ = handle_tx.send(server.handle());
                let _ = server.await;
            });
        });
        let http = handle_rx
            .recv()
            .expect("the receiver's HTTP server started");

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let grpc_spans = spans.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(grpc_listener) else {
                    return;
                };
                grpc_serve(listener, grpc_spans, stop_rx).await;
            });
        });
        Self {
            spans,
            http_port,
            grpc_port,
            http,
            grpc: Some(stop_tx),
        }
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for `http/protobuf`.
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for `grpc`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.grpc.take() {
            let _ = stop.send(());
        }
        // Stops accepting; the server's thread ends with it.
        drop(self.http.stop(false));
    }
}
