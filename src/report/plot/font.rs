//! The font of every figure: DejaVu Sans, embedded, so no system font library is needed.

use std::sync::Once;

use plotters::style::FontStyle;

/// The font of every figure: DejaVu Sans, embedded.
pub(super) const FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// Makes the embedded font plotters' "sans-serif" (once).
pub(super) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans is a valid font"));
    });
}
