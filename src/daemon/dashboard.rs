//! `GET /`: the dashboard, one self-contained page embedded in the binary
//! (HTML, CSS and JavaScript; no CDN, no web font, no build step). It reads
//! `/status`, follows `/events` (through `fetch`, so the token goes in a
//! header, never in a URL) and falls back to polling `/status` while the
//! stream is broken. The controls (swap, restart a session, reload) ask for
//! the token once, kept in the tab's `sessionStorage`.
//!
//! `TOKEN_PAGE` is what a browser gets instead when the listen needs the
//! token for every request (not loopback): a form that asks for it and then
//! loads the dashboard with it.

pub const PAGE: &str = include_str!("dashboard/page.html");
pub const TOKEN_PAGE: &str = include_str!("dashboard/token.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained() {
        for page in [PAGE, TOKEN_PAGE] {
            let lower = page.to_lowercase();
            assert!(
                !lower.contains("http://") && !lower.contains("https://"),
                "no external address"
            );
            assert!(
                !lower.contains("<script src") && !lower.contains("<link"),
                "no external script or style"
            );
            assert!(!lower.contains("@import") && !lower.contains("@font-face"));
        }
        // The token is sent in a header, never put in a URL.
        assert!(PAGE.contains("Authorization") && !PAGE.contains("token="));
        assert!(PAGE.contains("/events") && PAGE.contains("Last-Event-ID"));
    }
}
