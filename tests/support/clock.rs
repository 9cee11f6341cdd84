//! A clock for an operator under test. The operator gets it through its environment
//! (`CLOCK_START`, `CLOCK_ANCHOR`, `CLOCK_SPEED`); the test reads [`TestClock::now`] from
//! the same [`Clock`] to write Leases, schedules and times the operator will judge, without
//! installing it process-wide (other tests in the binary run on the system clock).

use k8s_openapi::jiff::Timestamp;
use openemr_operator::clock::Clock;

pub struct TestClock {
    pub clock: Clock,
    vars: [(&'static str, String); 3],
}

impl TestClock {
    /// A clock that shows `start` (RFC 3339) now and runs `speed` times as fast.
    pub fn starting(start: &str, speed: f64) -> TestClock {
        let anchor = Timestamp::now();
        let shows: Timestamp = start.parse().expect("an RFC 3339 instant");
        TestClock {
            clock: Clock::new(anchor, shows, speed).expect("a valid speed"),
            vars: [
                ("CLOCK_START", shows.to_string()),
                ("CLOCK_ANCHOR", anchor.to_string()),
                ("CLOCK_SPEED", speed.to_string()),
            ],
        }
    }

    /// Now, on the operator's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.at(Timestamp::now())
    }

    /// The environment that starts an operator on this clock.
    pub fn vars(&self) -> Vec<(&str, &str)> {
        self.vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}
