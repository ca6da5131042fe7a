//! Counts the requests in flight for [`RequestsFirst`], so that consumers in the same process
//! take turns while requests wait for the database and the broker (see
//! `jetflow_runtime::priority`). Wrap the server's app with [`middleware`] and give it the
//! `RequestsFirst` as app data; without it, requests pass untouched.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use jetflow_runtime::priority::RequestsFirst;

/// Marks each request in flight for the app's [`RequestsFirst`] until its response is ready.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let _in_flight = req
        .app_data::<web::Data<RequestsFirst>>()
        .map(|f| f.enter());
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::middleware::from_fn;
    use actix_web::{App, HttpResponse, test};

    #[actix_web::test]
    async fn a_request_is_in_flight_while_it_is_handled_and_not_after() {
        let fg = RequestsFirst::new(1, 1.0);
        let seen = fg.clone();
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(fg.clone()))
                .wrap(from_fn(middleware))
                .route(
                    "/",
                    web::get().to(move || {
                        let n = seen.in_flight();
                        async move { HttpResponse::Ok().body(n.to_string()) }
                    }),
                ),
        )
        .await;
        let body =
            test::call_and_read_body(&app, test::TestRequest::get().uri("/").to_request()).await;
        assert_eq!(body, "1");
        assert_eq!(fg.in_flight(), 0);
    }

    #[actix_web::test]
    async fn without_a_foreground_requests_pass() {
        let app = test::init_service(
            App::new()
                .wrap(from_fn(middleware))
                .route("/", web::get().to(HttpResponse::Ok)),
        )
        .await;
        let res = test::call_service(&app, test::TestRequest::get().uri("/").to_request()).await;
        assert!(res.status().is_success());
    }
}
