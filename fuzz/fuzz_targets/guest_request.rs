//! Fuzzes the guest's OpenAI request validation (`api::parse`: JSON body → engine request). The
//! first input byte picks the endpoint (even: chat, odd: completions), the rest is the body.
//! An accepted request serializes (as the engine adapter gets it) and, rebuilt as a body, parses
//! to the same request; a rejection is a 4xx with an error body.
#![no_main]

use chrysalis_fuzz::request_body;
use chrysalis_guest::api::{self, Endpoint, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let endpoint = if mode % 2 == 0 {
        Endpoint::Chat
    } else {
        Endpoint::Completion
    };
    let limits = Limits {
        model_id: chrysalis_fuzz::MODEL.into(),
        max_tokens_cap: 256,
        default_max_tokens: 16,
    };
    match api::parse(endpoint, body, &limits) {
        Ok(req) => {
            assert_eq!(req.endpoint, endpoint);
            assert!((1..=limits.max_tokens_cap).contains(&req.generate.max_tokens));
            assert!(req.stream || !req.include_usage);
            let _ = serde_json::to_vec(&req.generate).expect("an accepted request serializes");
            let again = api::parse(endpoint, &request_body(&req), &limits)
                .expect("an accepted request, rebuilt, is accepted");
            assert!(
                chrysalis_fuzz::same_request(&again, &req),
                "{again:?} != {req:?}"
            );
        }
        Err(e) => {
            assert!(e.status.is_client_error(), "{}", e.status);
            let _ = serde_json::to_vec(&e.body()).expect("an error body serializes");
        }
    }
});
