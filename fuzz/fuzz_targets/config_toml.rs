//! Fuzzes `Config::from_toml`: no panic on any text, and every configuration it accepts builds a
//! route table whose routes all have a normalised prefix.
#![no_main]

use gatehouse::config::Config;
use gatehouse::proxy::path::normalize;
use gatehouse::routes::RouteTable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text) else {
        return;
    };
    let table = RouteTable::new(&config.routes);
    assert_eq!(table.len(), config.routes.len());
    for route in table.iter() {
        assert_eq!(
            normalize(&route.path_prefix).as_deref(),
            Ok(route.path_prefix.as_str()),
            "route {} has an unnormalised prefix",
            route.name
        );
    }
});
