//! `POST /orders` bodies: parsing and validation with messages that name the field.
//!
//! The body is read as a generic JSON value and checked field by field, because serde's own
//! errors ("invalid type: integer, expected a string at line 1 column 17") do not say which
//! field is wrong. Unknown fields are refused: an order that does not match the contract is
//! never accepted.

use jetflow_schemas::{OrderItem, Priority, ShippingAddress};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::routes::orders::PriorityView;

/// Most items an order may have.
pub const MAX_ITEMS: usize = 100;
/// Largest quantity of one item.
pub const MAX_QUANTITY: u64 = 1000;
/// Longest customer or product id, in characters.
pub const MAX_ID_CHARS: usize = 64;

/// One item of an order request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderItemRequest {
    /// The product, 1 to 64 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]{1,64}$",
        example = "sku-1"
    )]
    pub product_id: String,
    /// How many, 1 to 1000.
    #[schema(minimum = 1, maximum = 1000, example = 2)]
    pub quantity: u32,
}

/// Where to ship an order (carried by `orders.created` v2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShippingAddressRequest {
    /// Who receives it, 1 to 128 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]{1,128}$",
        example = "Erika Mustermann"
    )]
    pub recipient: String,
    /// First address line, 1 to 128 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]{1,128}$",
        example = "Heidestraße 17"
    )]
    pub line1: String,
    /// Second address line, up to 128 characters, no control characters; may be null or absent.
    #[schema(max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]{0,128}$")]
    pub line2: Option<String>,
    /// City, 1 to 64 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]{1,64}$",
        example = "Köln"
    )]
    pub city: String,
    /// Postal code, 1 to 16 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 16,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]{1,16}$",
        example = "51147"
    )]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code, e.g. `DE`.
    #[schema(pattern = "^[A-Z]{2}$", example = "DE")]
    pub country: String,
}

// Like every request object here, it is closed: `parse` refuses unknown fields, and the
// OpenAPI document says so (`routes::openapi::CLOSED_OBJECTS`: `additionalProperties: false`).
/// The body of `POST /orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateOrderRequest {
    /// The customer, 1 to 64 characters, no control characters. Customers whose id starts
    /// with `declined-` are declined by the simulated payment provider.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]{1,64}$",
        example = "c-42"
    )]
    pub customer_id: String,
    /// 1 to 100 items.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<OrderItemRequest>,
    /// `standard` when absent, or `express` (its own lane: never queued behind standard
    /// orders). Not nullable: `null` is refused.
    #[schema(value_type = Option<PriorityView>, nullable = false)]
    pub priority: Option<String>,
    /// Optional shipping address (`null` is the same as absent).
    pub shipping_address: Option<ShippingAddressRequest>,
}

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidOrder {
    /// The customer.
    pub customer_id: String,
    /// The items, in request order.
    pub items: Vec<OrderItem>,
    /// The lane.
    pub priority: Priority,
    /// The shipping address.
    pub shipping_address: Option<ShippingAddress>,
}

impl ValidOrder {
    /// A canonical text of the request, to compare repeats of an `Idempotency-Key`.
    pub fn canonical(&self) -> String {
        serde_json::json!({
            "customer_id": self.customer_id,
            "items": self.items.iter().map(|i| serde_json::json!([i.product_id, i.quantity])).collect::<Vec<_>>(),
            "priority": self.priority.as_str(),
            "shipping_address": self.shipping_address,
        })
        .to_string()
    }
}

/// The value of a JSON number that is an integer, as JSON Schema's `integer` takes it: `2`,
/// `2.0` and `2e0` alike (JSON does not tell them apart); `None` for `2.5` or a value outside
/// `i64`.
pub fn json_integer(n: &serde_json::Number) -> Option<i64> {
    // 2^63: the first float past i64::MAX.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (-LIMIT..LIMIT).contains(f))
            .map(|f| f as i64)
    })
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_field", message)
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn reject_unknown(obj: &Map<String, Value>, known: &[&str], path: &str) -> Result<(), ApiError> {
    for key in obj.keys() {
        if !known.contains(&key.as_str()) {
            let field = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            return Err(invalid(format!(
                "{field}: unknown field (allowed: {})",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

fn string_field(
    obj: &Map<String, Value>,
    name: &str,
    path: &str,
    min: usize,
    max: usize,
    required: bool,
) -> Result<Option<String>, ApiError> {
    let field = if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    };
    match obj.get(name) {
        None if required => Err(invalid(format!("{field} is required"))),
        None => Ok(None),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n < min || n > max {
                Err(invalid(format!(
                    "{field} must be {min} to {max} characters long, got {n}"
                )))
            } else if s.chars().any(char::is_control) {
                Err(invalid(format!(
                    "{field} must not contain control characters"
                )))
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(other) => Err(invalid(format!(
            "{field} must be a string, got {}",
            describe(other)
        ))),
    }
}

fn parse_item(index: usize, value: &Value) -> Result<OrderItem, ApiError> {
    let path = format!("items[{index}]");
    let Value::Object(obj) = value else {
        return Err(invalid(format!(
            "{path} must be an object with product_id and quantity, got {}",
            describe(value)
        )));
    };
    reject_unknown(obj, &["product_id", "quantity"], &path)?;
    let product_id =
        string_field(obj, "product_id", &path, 1, MAX_ID_CHARS, true)?.unwrap_or_default();
    let quantity = match obj.get("quantity") {
        None => return Err(invalid(format!("{path}.quantity is required"))),
        Some(Value::Number(n)) => match json_integer(n) {
            Some(q) if (1..=MAX_QUANTITY as i64).contains(&q) => q as u32,
            _ => {
                return Err(invalid(format!(
                    "{path}.quantity must be an integer from 1 to {MAX_QUANTITY}, got {n}"
                )));
            }
        },
        Some(other) => {
            return Err(invalid(format!(
                "{path}.quantity must be an integer from 1 to {MAX_QUANTITY}, got {}",
                describe(other)
            )));
        }
    };
    Ok(OrderItem {
        product_id,
        quantity,
    })
}

fn parse_address(value: &Value) -> Result<ShippingAddress, ApiError> {
    let path = "shipping_address";
    let Value::Object(obj) = value else {
        return Err(invalid(format!(
            "{path} must be an object, got {}",
            describe(value)
        )));
    };
    reject_unknown(
        obj,
        &[
            "recipient",
            "line1",
            "line2",
            "city",
            "postal_code",
            "country",
        ],
        path,
    )?;
    let country = string_field(obj, "country", path, 2, 2, true)?.unwrap_or_default();
    if !country.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(invalid(format!(
            "{path}.country must be an ISO 3166-1 alpha-2 code in capitals, e.g. \"DE\", got {country:?}"
        )));
    }
    let line2 = match obj.get("line2") {
        Some(Value::Null) => None,
        _ => string_field(obj, "line2", path, 0, 128, false)?,
    };
    Ok(ShippingAddress {
        recipient: string_field(obj, "recipient", path, 1, 128, true)?.unwrap_or_default(),
        line1: string_field(obj, "line1", path, 1, 128, true)?.unwrap_or_default(),
        line2,
        city: string_field(obj, "city", path, 1, 64, true)?.unwrap_or_default(),
        postal_code: string_field(obj, "postal_code", path, 1, 16, true)?.unwrap_or_default(),
        country,
    })
}

/// Parses and validates a `POST /orders` body.
pub fn parse(body: &[u8]) -> Result<ValidOrder, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "malformed_json",
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(obj) = &value else {
        return Err(invalid(format!(
            "request body must be a JSON object, got {}",
            describe(&value)
        )));
    };
    reject_unknown(
        obj,
        &["customer_id", "items", "priority", "shipping_address"],
        "",
    )?;
    let customer_id =
        string_field(obj, "customer_id", "", 1, MAX_ID_CHARS, true)?.unwrap_or_default();
    let items = match obj.get("items") {
        None => return Err(invalid("items is required")),
        Some(Value::Array(items)) if items.is_empty() || items.len() > MAX_ITEMS => {
            return Err(invalid(format!(
                "items must have 1 to {MAX_ITEMS} entries, got {}",
                items.len()
            )));
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| parse_item(i, v))
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(invalid(format!(
                "items must be an array, got {}",
                describe(other)
            )));
        }
    };
    let priority = match obj.get("priority") {
        None => Priority::Standard,
        Some(Value::String(s)) => s.parse::<Priority>().map_err(invalid)?,
        Some(other) => {
            return Err(invalid(format!(
                "priority must be \"standard\" or \"express\", got {other}"
            )));
        }
    };
    let shipping_address = match obj.get("shipping_address") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_address(v)?),
    };
    Ok(ValidOrder {
        customer_id,
        items,
        priority,
        shipping_address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        parse(body.as_bytes()).expect_err("invalid").message
    }

    #[test]
    fn a_valid_order_parses() {
        let o = parse(br#"{"customer_id":"c-1","items":[{"product_id":"sku-1","quantity":2}],"priority":"express"}"#)
            .unwrap();
        assert_eq!(o.customer_id, "c-1");
        assert_eq!(o.priority, Priority::Express);
        assert_eq!(o.items[0].quantity, 2);
        let o = parse(br#"{"customer_id":"c","items":[{"product_id":"p","quantity":1}]}"#).unwrap();
        assert_eq!(o.priority, Priority::Standard);
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err("{").contains("not valid JSON"));
        assert!(err("[]").contains("JSON object"));
        assert!(err(r#"{"items":[]}"#).contains("customer_id is required"));
        assert!(err(r#"{"customer_id":"","items":[]}"#).contains("customer_id must be 1 to 64"));
        assert!(err(r#"{"customer_id":5,"items":[]}"#).contains("customer_id must be a string"));
        assert!(err(r#"{"customer_id":"c","items":[]}"#).contains("items must have 1 to 100"));
        assert!(err(r#"{"customer_id":"c","items":{}}"#).contains("items must be an array"));
        assert!(
            err(r#"{"customer_id":"c","items":[{"product_id":"p","quantity":0}]}"#)
                .contains("items[0].quantity")
        );
        assert!(
            err(r#"{"customer_id":"c","items":[{"product_id":"p","quantity":1.5}]}"#)
                .contains("items[0].quantity")
        );
        assert!(
            err(r#"{"customer_id":"c","items":[{"product_id":"p","quantity":1},{"quantity":1}]}"#)
                .contains("items[1].product_id is required")
        );
        assert!(
            err(r#"{"customer_id":"c","items":[{"product_id":"p","quantity":1,"x":1}]}"#)
                .contains("items[0].x: unknown field")
        );
        assert!(
            err(
                r#"{"customer_id":"c","items":[{"product_id":"p","quantity":1}],"priority":"fast"}"#
            )
            .contains("priority")
        );
        assert!(
            err(r#"{"customer_id":"c","items":[{"product_id":"p","quantity":1}],"extra":1}"#)
                .contains("extra: unknown field")
        );
        let long = "x".repeat(65);
        assert!(err(&format!(r#"{{"customer_id":"{long}","items":[]}}"#)).contains("customer_id"));
    }

    #[test]
    fn integral_numbers_are_integers() {
        let o = parse(br#"{"customer_id":"c","items":[{"product_id":"p","quantity":2.0},{"product_id":"q","quantity":1e3}]}"#)
            .unwrap();
        assert_eq!(o.items[0].quantity, 2);
        assert_eq!(o.items[1].quantity, 1000);
        let plain = parse(br#"{"customer_id":"c","items":[{"product_id":"p","quantity":2},{"product_id":"q","quantity":1000}]}"#)
            .unwrap();
        assert_eq!(o.canonical(), plain.canonical());
        assert!(
            err(r#"{"customer_id":"c","items":[{"product_id":"p","quantity":1000.5}]}"#)
                .contains("items[0].quantity")
        );
        assert!(
            err(r#"{"customer_id":"c","items":[{"product_id":"p","quantity":1001.0}]}"#)
                .contains("items[0].quantity")
        );
        let n = |text: &str| json_integer(&serde_json::from_str(text).unwrap());
        assert_eq!(n("-3"), Some(-3));
        assert_eq!(n("-3.0"), Some(-3));
        assert_eq!(n("1e12"), Some(1_000_000_000_000));
        assert_eq!(n("0.5"), None);
        assert_eq!(n("1e19"), None);
        assert_eq!(n("18446744073709551615"), None);
    }

    #[test]
    fn addresses_are_checked() {
        let ok = r#"{"customer_id":"c","items":[{"product_id":"p","quantity":1}],
            "shipping_address":{"recipient":"A","line1":"B 1","city":"Berlin","postal_code":"10115","country":"DE"}}"#;
        assert!(parse(ok.as_bytes()).unwrap().shipping_address.is_some());
        let bad = ok.replace("\"DE\"", "\"de\"");
        assert!(err(&bad).contains("shipping_address.country"));
        let missing = ok.replace(r#""city":"Berlin","#, "");
        assert!(err(&missing).contains("shipping_address.city is required"));
    }

    #[test]
    fn canonical_form_ignores_formatting() {
        let a = parse(br#"{"customer_id":"c","items":[{"product_id":"p","quantity":1}]}"#).unwrap();
        let b = parse(br#"{ "items":[{"quantity":1,"product_id":"p"}], "customer_id":"c", "priority":"standard" }"#)
            .unwrap();
        assert_eq!(a.canonical(), b.canonical());
    }
}
