//! The console's two languages. Every sentence is written in place as an
//! English and a Chinese pair (`l.t("Ledger", "账本")`), so a page reads
//! whole in either, and nothing is looked up by key.

use crate::ledger::entry::EntryKind;

/// A language of the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// English.
    En,
    /// Simplified Chinese.
    Zh,
}

impl Lang {
    /// `en` or `zh` (also `zh-CN`, `en-US`, any case).
    pub fn parse(s: &str) -> Option<Lang> {
        let primary = s.trim().split(['-', '_']).next()?.to_ascii_lowercase();
        match primary.as_str() {
            "en" => Some(Lang::En),
            "zh" => Some(Lang::Zh),
            _ => None,
        }
    }

    /// The language an `Accept-Language` header prefers among ours: the
    /// highest weight wins, the first listed among equals.
    pub fn from_accept(header: &str) -> Option<Lang> {
        let mut best: Option<(Lang, u32)> = None;
        for item in header.split(',') {
            let mut parts = item.split(';');
            let Some(lang) = parts.next().and_then(Lang::parse) else {
                continue;
            };
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .map_or(1000, |q| {
                    q.trim()
                        .parse::<f32>()
                        .map_or(0, |q| (q.clamp(0.0, 1.0) * 1000.0) as u32)
                });
            if q > 0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((lang, q));
            }
        }
        best.map(|(l, _)| l)
    }

    /// The page's `lang` attribute.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    /// The English or the Chinese.
    pub fn t<'a>(self, en: &'a str, zh: &'a str) -> &'a str {
        match self {
            Lang::En => en,
            Lang::Zh => zh,
        }
    }

    /// What an entry kind means, in words.
    pub fn kind(self, kind: EntryKind) -> String {
        let (en, zh) = match kind {
            EntryKind::NodeStarted => ("node started", "节点已启动"),
            EntryKind::DatasetPublished => ("dataset published", "数据集已发布"),
            EntryKind::AccessGranted => ("access granted", "已授予访问"),
            EntryKind::AccessDenied => ("access refused", "已拒绝访问"),
            EntryKind::TransferStarted => ("transfer started", "传输已开始"),
            EntryKind::TransferCompleted => ("transfer completed", "传输已完成"),
            EntryKind::TransferResumed => ("transfer resumed", "传输已续传"),
            EntryKind::ReceiptRecorded => ("receipt recorded", "回执已记录"),
            EntryKind::GrantRevoked => ("grant revoked", "授权已撤销"),
            EntryKind::PeerCheckpointSeen => ("peer checkpoint witnessed", "已见证对方检查点"),
            EntryKind::GrantReceived => ("grant received", "已收到授权"),
            EntryKind::KeyRotated => ("key rotated", "密钥已轮换"),
            EntryKind::ForkDetected => ("fork detected", "发现分叉"),
            EntryKind::Unknown(c) => {
                return match self {
                    Lang::En => format!("unknown kind {c}"),
                    Lang::Zh => format!("未知类型 {c}"),
                };
            }
        };
        self.t(en, zh).to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_picks_the_preferred_of_ours() {
        assert_eq!(Lang::from_accept("zh-CN,zh;q=0.9,en;q=0.8"), Some(Lang::Zh));
        assert_eq!(Lang::from_accept("en-US,en;q=0.9"), Some(Lang::En));
        assert_eq!(
            Lang::from_accept("fr-FR, en;q=0.5, zh;q=0.7"),
            Some(Lang::Zh)
        );
        assert_eq!(Lang::from_accept("de, fr"), None);
        assert_eq!(Lang::from_accept("zh;q=0, en;q=0.1"), Some(Lang::En));
        assert_eq!(Lang::from_accept(""), None);
        assert_eq!(Lang::from_accept("zh;q=nonsense"), None);
        assert_eq!(Lang::parse("ZH_cn"), Some(Lang::Zh));
    }

    #[test]
    fn every_kind_has_words_in_both() {
        for k in EntryKind::KNOWN {
            assert_ne!(Lang::En.kind(k), Lang::Zh.kind(k));
        }
    }
}
