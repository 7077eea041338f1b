/// Where a call's `to` leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The built-in line that returns the browser's audio to it.
    Echo,
    /// Nothing is configured for this destination.
    NotFound,
}

/// Maps API destinations to routes. Only the echo line exists until the SIP
/// leg lands; unknown destinations are refused rather than guessed at.
#[derive(Debug, Clone)]
pub struct Router {
    echo_destination: Option<String>,
}

impl Router {
    /// `echo_destination` is the name of the echo line, or `None` to disable it.
    pub fn new(echo_destination: Option<String>) -> Self {
        Router { echo_destination }
    }

    pub fn route(&self, to: &str) -> Route {
        match &self.echo_destination {
            Some(echo) if to.trim() == echo => Route::Echo,
            _ => Route::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_echo_by_configured_name() {
        let r = Router::new(Some("echo".into()));
        assert_eq!(r.route("echo"), Route::Echo);
        assert_eq!(r.route(" echo "), Route::Echo);
        assert_eq!(r.route("1000"), Route::NotFound);
        let renamed = Router::new(Some("*43".into()));
        assert_eq!(renamed.route("*43"), Route::Echo);
        assert_eq!(renamed.route("echo"), Route::NotFound);
        assert_eq!(Router::new(None).route("echo"), Route::NotFound);
    }
}
