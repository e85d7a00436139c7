// Ad-tech: impressions and clicks per campaign, with the click-through rate.
// `events.impressions.<campaign>` and `events.clicks.<campaign>`.
import { defineActor } from '../runtime/types.js';

interface Campaign {
  impressions: number;
  clicks: number;
  ctr: number;
  spend: number;
}

export default defineActor<Campaign, { cost?: number }>({
  name: 'campaign',
  events: ['impressions', 'clicks'],
  guarantee: 'at-least-once',
  initial: () => ({ impressions: 0, clicks: 0, ctr: 0, spend: 0 }),
  handle(state, event) {
    if (event.type === 'impressions') {
      state.impressions += 1;
      state.spend = Math.round((state.spend + Number(event.data.cost ?? 0)) * 1e6) / 1e6;
    } else {
      state.clicks += 1;
    }
    state.ctr = state.impressions > 0 ? state.clicks / state.impressions : 0;
    return state;
  },
});
