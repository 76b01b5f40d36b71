//! The mapping between [`WindowStats`] and the flat hash fields the origin keeps it in
//! (the field names are listed in [`crate::stats`]).

use super::*;

impl WindowStats {
    /// The counters as flat hash fields (non-zero ones only).
    pub fn to_fields(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        let mut push = |k: String, v: f64| {
            if v != 0.0 {
                out.push((k, v));
            }
        };
        push("req.ht".into(), self.requests.ht);
        push("req.n".into(), self.requests.n as f64);
        push("req.sq".into(), self.requests_sq);
        push("u.ht".into(), self.unreported.ht);
        push("u.n".into(), self.unreported.n as f64);
        push("u.sq".into(), self.unreported_sq);
        push("l.ht".into(), self.late.ht);
        push("l.n".into(), self.late.n as f64);
        for (id, c) in &self.campaigns {
            push(format!("a.{id}.ht"), c.allocations.ht);
            push(format!("a.{id}.n"), c.allocations.n as f64);
            push(format!("i.{id}.ht"), c.impressions.ht);
            push(format!("i.{id}.n"), c.impressions.n as f64);
            push(format!("a.{id}.sq"), c.allocations_sq);
            push(format!("i.{id}.sq"), c.impressions_sq);
            push(format!("u.{id}.ht"), c.unreported.ht);
            push(format!("u.{id}.n"), c.unreported.n as f64);
            push(format!("li.{id}.ht"), c.late_impressions.ht);
            push(format!("li.{id}.n"), c.late_impressions.n as f64);
        }
        for ((id, platform), p) in &self.platforms {
            push(format!("pa.{id}.{platform}.ht"), p.allocations);
            push(format!("pu.{id}.{platform}.ht"), p.unreported);
            push(format!("pi.{id}.{platform}.ht"), p.impressions);
        }
        for (k, v) in &self.profiles {
            push(format!("p.{k}"), *v);
        }
        for (k, v) in &self.versions {
            push(format!("v.{k}"), *v);
        }
        out
    }

    /// Rebuilds the counters from hash fields ([`Self::read_fields`], the skipped
    /// names dropped).
    pub fn from_fields<K: AsRef<str>>(fields: impl IntoIterator<Item = (K, f64)>) -> Result<Self, StatsError> {
        Self::read_fields(fields).map(|(s, _)| s)
    }

    /// Rebuilds the counters from hash fields, and names the fields it skipped.
    ///
    /// A field of a kind this build does not know is skipped, not refused: windows are
    /// shared by every replica, and a newer one may write fields an older one has never
    /// heard of. Refusing them would stop the rounds and status reads of every replica
    /// not yet upgraded (and of a rollback) until the window expires; skipping them reads
    /// the window as this build would have written it. A known kind that does not parse
    /// (a campaign id or plan version that is not one) is corruption, and an error.
    ///
    /// So a field added later must not look like a known one to an older reader: no `p.`
    /// or `v.` prefix (read as a profile or a plan version), no
    /// `{a,i,u,li}.{id}.{ht,n,sq}` or `{pa,pu,pi}.{id}.{platform}.ht` shape, none of the fixed names.
    pub fn read_fields<K: AsRef<str>>(
        fields: impl IntoIterator<Item = (K, f64)>,
    ) -> Result<(Self, Vec<String>), StatsError> {
        let mut s = Self::default();
        let mut skipped = Vec::new();
        for (k, v) in fields {
            let k = k.as_ref();
            let err = || StatsError(k.to_string());
            let n = || v.round().max(0.0) as u64;
            match k {
                "req.ht" => s.requests.ht = v,
                "req.n" => s.requests.n = n(),
                "req.sq" => s.requests_sq = v,
                "u.ht" => s.unreported.ht = v,
                "u.n" => s.unreported.n = n(),
                "u.sq" => s.unreported_sq = v,
                "l.ht" => s.late.ht = v,
                "l.n" => s.late.n = n(),
                _ => match k.split_once('.') {
                    Some(("p", profile)) => {
                        s.profiles.insert(profile.to_string(), v);
                    }
                    Some(("v", version)) => {
                        s.versions.insert(version.parse().map_err(|_| err())?, v);
                    }
                    Some((head @ ("a" | "i" | "u" | "li"), rest)) => {
                        let has_sq = matches!(head, "a" | "i");
                        let known = |what: &str| what == "ht" || what == "n" || (what == "sq" && has_sq);
                        let Some((id, what)) = rest.rsplit_once('.').filter(|(_, what)| known(what)) else {
                            skipped.push(k.to_string());
                            continue;
                        };
                        let id = CampaignId::parse(id).map_err(|_| err())?;
                        let c = s.campaigns.entry(id).or_default();
                        let (tally, sq) = match head {
                            "a" => (&mut c.allocations, &mut c.allocations_sq),
                            "i" => (&mut c.impressions, &mut c.impressions_sq),
                            "u" => (&mut c.unreported, &mut 0.0),
                            _ => (&mut c.late_impressions, &mut 0.0),
                        };
                        match what {
                            "ht" => tally.ht = v,
                            "n" => tally.n = n(),
                            _ => *sq = v,
                        }
                    }
                    Some((head @ ("pa" | "pu" | "pi"), rest)) => {
                        let parts = rest.rsplit_once('.').and_then(|(r, what)| Some((r.rsplit_once('.')?, what)));
                        let Some(((id, platform), _)) = parts.filter(|(_, what)| *what == "ht") else {
                            skipped.push(k.to_string());
                            continue;
                        };
                        let id = CampaignId::parse(id).map_err(|_| err())?;
                        let p = s.platforms.entry((id, platform.to_string())).or_default();
                        *match head {
                            "pa" => &mut p.allocations,
                            "pu" => &mut p.unreported,
                            _ => &mut p.impressions,
                        } = v;
                    }
                    _ => skipped.push(k.to_string()),
                },
            }
        }
        Ok((s, skipped))
    }
}
